"""Which API keys to write this tick: a pure plan over what is stored and what was read.

Writing 2,000 keys a tick would cost more than the rest of the tick, so a key is written
(its current row, and a row of history) only when its figures changed, when it is new, or
an hour after its last write; keys no longer listed are forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.domain import ApiKey, KeyRecord

REWRITE_EVERY = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class KeyPlan:
    write: tuple[KeyRecord, ...]  # upsert into api_keys, and append to key_readings
    gone: tuple[str, ...]  # ids to forget


def record(key: ApiKey, now: datetime) -> KeyRecord:
    return KeyRecord(key.id, key.name, key.label, key.limit, key.limit_remaining, key.limit_reset,
                     key.usage, key.usage_daily, key.usage_weekly, key.usage_monthly, now)


def plan(stored: Mapping[str, KeyRecord], current: Sequence[ApiKey], now: datetime) -> KeyPlan:
    """The writes that bring `stored` up to `current` (the keys listed this tick)."""
    write = []
    for key in current:
        old = stored.get(key.id)
        if (old is None  # new, or a figure moved (the usages first: what moves most), or due again
                or (old.usage_daily, old.usage, old.limit_remaining, old.usage_weekly,
                    old.usage_monthly, old.limit, old.limit_reset, old.name, old.label)
                != (key.usage_daily, key.usage, key.limit_remaining, key.usage_weekly,
                    key.usage_monthly, key.limit, key.limit_reset, key.name, key.label)
                or _stale(old, now)):
            write.append(record(key, now))
    listed = {k.id for k in current}
    gone = tuple(sorted(i for i in stored if i not in listed))
    return KeyPlan(tuple(write), gone)


def _stale(old: KeyRecord, now: datetime) -> bool:
    # A clock stepped back past the last write counts as stale too.
    return not old.seen_at <= now < old.seen_at + REWRITE_EVERY


def apply(stored: Mapping[str, KeyRecord], planned: KeyPlan) -> dict[str, KeyRecord]:
    """`stored` as it is once the plan is written."""
    gone = set(planned.gone)
    after = {i: r for i, r in stored.items() if i not in gone}
    after.update({r.id: r for r in planned.write})
    return after
