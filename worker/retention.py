"""Retention: fold readings older than keep_raw into hourly rollups, prune the rest.

Each batch is its own short transaction, so pruning a year of backlog never
holds a long lock; a tick does at most MAX_BATCHES and leaves the rest for later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from worker import store

BATCH = 500
MAX_BATCHES = 20


@dataclass(frozen=True)
class Pruned:
    folded: int = 0
    rollups: int = 0
    attempts: int = 0
    outbox: int = 0
    key_readings: int = 0
    silences: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


def prune(factory: sessionmaker[Session], now: datetime, keep_raw: timedelta,
          keep_rollups: timedelta) -> Pruned:
    """Run retention in bounded batches; returns what it removed."""
    total = Pruned()
    for _ in range(MAX_BATCHES):
        # Takes turns with ticks (and a `check` beside the leader): two writers folding the
        # same readings at once would count them twice in the rollups.
        with store.tick_transaction(factory) as session:
            step = _one_batch(session, now - keep_raw, now - keep_rollups)
        total += step
        if step == Pruned():
            break
    return total


def _one_batch(session: Session, raw_cutoff: datetime, rollup_cutoff: datetime) -> Pruned:
    return Pruned(
        folded=store.fold_readings_before(session, raw_cutoff, BATCH),
        rollups=store.delete_rollups_before(session, rollup_cutoff, BATCH),
        attempts=store.delete_attempts_before(session, raw_cutoff, BATCH),
        outbox=store.delete_finished_messages_before(session, raw_cutoff, BATCH),
        key_readings=store.delete_key_readings_before(session, raw_cutoff, BATCH),
        silences=store.delete_silences_before(session, raw_cutoff, BATCH),
    )


class Retention:
    """Runs `prune` at most once an hour in this process (rollups are hourly, and the
    cut-off moves one interval a tick); a failure is retried at the next tick."""

    EVERY = timedelta(hours=1)

    def __init__(self, sessions: sessionmaker[Session], keep_raw: timedelta, keep_rollups: timedelta) -> None:
        self._sessions = sessions
        self._keep_raw = keep_raw
        self._keep_rollups = keep_rollups
        self.last_run: datetime | None = None

    def due(self, now: datetime) -> bool:
        # A clock stepped back past the last run counts as due: do not wait for it to catch up.
        last = self.last_run
        return last is None or not last <= now < last + self.EVERY

    def run(self, now: datetime) -> Pruned:
        """Prune now (database errors propagate); the next run is due an hour later."""
        pruned = prune(self._sessions, now, self._keep_raw, self._keep_rollups)
        self.last_run = now
        return pruned
