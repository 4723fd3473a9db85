"""Whether `run` is healthy, judged from what its ticks did: a pure function of that record and
`now`, for /healthz.

Healthy while it ticks on schedule (the last tick ended less than 2 x interval + the longest
a tick may take ago) and the database answers (not the last 3 ticks all failed on it). A
failing fetch alone is not unhealthy: that is what fetch_failure alerts are for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

DATABASE_FAILURES = 3


@dataclass(frozen=True, slots=True)
class Record:
    """What the ticks did so far, in monotonic seconds."""

    started_at: float
    last_tick_ended_at: float | None = None
    database_failures: int = 0  # consecutive ticks that failed on the database
    stopped: bool = False  # the scheduler stopped (shutdown, or it died)
    standby: bool = False  # another replica leads; this one waits


def tick_ended(record: Record, at: float, database_failed: bool) -> Record:
    failures = record.database_failures + 1 if database_failed else 0
    return replace(record, last_tick_ended_at=at, database_failures=failures)


@dataclass(frozen=True, slots=True)
class Verdict:
    healthy: bool
    reason: str  # one line: "ok", "ok standby", or why not


def judge(record: Record, now: float, interval: timedelta, worst_tick: float) -> Verdict:
    """The /healthz verdict at monotonic `now`."""
    if record.stopped:
        return Verdict(False, "the scheduler has stopped")
    if record.database_failures >= DATABASE_FAILURES:
        return Verdict(False, f"the last {record.database_failures} ticks failed on the database")
    allowed = 2 * interval.total_seconds() + worst_tick
    since = record.last_tick_ended_at if record.last_tick_ended_at is not None else record.started_at
    late = now - since
    if late > allowed:
        what = "no tick has ended" if record.last_tick_ended_at is None else "the last tick ended"
        return Verdict(False, f"{what} {late:.0f}s ago, more than 2 x interval + the longest a tick "
                              f"may take ({allowed:.0f}s): a tick is stuck or the scheduler died")
    return Verdict(True, "ok standby" if record.standby else "ok")
