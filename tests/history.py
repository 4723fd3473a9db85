"""A made-up balance history, stored the way creditwatch stores its own: raw readings every
5 minutes for the last days, hourly rollups (folded by the store's own retention query) before.

The story, from the newest reading back: a steady $0.30/h for the last 11 hours (so burn rate
and runway do not depend on exactly which readings a window holds), a $6 burst 11-14 hours
ago, an $8 burst about two days ago, and a $50 top-up four days ago. $44 is left at the end.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from worker import db, store
from worker.domain import Reading
from worker.tables import ReadingRow

EVERY = timedelta(minutes=5)
RATE = 0.3  # USD per hour over the last 11 hours
CREDITS_END, USAGE_END = 150.0, 106.0
BURSTS = ((11.0, 14.0, 6.0), (47.0, 50.0, 8.0))  # (ended hours ago, began hours ago, USD)
TOP_UP_HOURS_AGO, TOP_UP = 96.0, 50.0


def usage(hours_ago: float) -> float:
    """total_usage `hours_ago` before the end: the steady rate, less the bursts still to come."""
    value = USAGE_END - RATE * hours_ago
    for ended, began, amount in BURSTS:
        value -= amount * min(1.0, max(0.0, (hours_ago - ended) / (began - ended)))
    return round(value, 6)


def credits(hours_ago: float) -> float:
    return CREDITS_END - (TOP_UP if hours_ago >= TOP_UP_HOURS_AGO else 0.0)


def readings(end: datetime, days: float) -> list[Reading]:
    """One reading every EVERY, the last at `end`, oldest first."""
    n = int(timedelta(days=days) / EVERY)
    out = []
    for i in range(n, -1, -1):
        hours = i * EVERY / timedelta(hours=1)
        out.append(Reading(end - i * EVERY, credits(hours), usage(hours)))
    return out


def usage_after(end: datetime, at: datetime) -> float:
    """total_usage at a moment after the end, on the steady line (what the fake API answers)."""
    return round(USAGE_END + RATE * (at - end) / timedelta(hours=1), 6)


def seed(url: str, end: datetime, days: float = 10, raw_days: float = 3, account: str = "default") -> None:
    """Create the schema (when missing) and store the history; readings older than `raw_days`
    before `end` are folded into hourly rollups, as retention folds them."""
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        sessions = store.sessions(engine)
        with sessions.begin() as session:
            session.add_all(ReadingRow(account=account, fetched_at=r.fetched_at, timeline=0,
                                       total_credits=r.total_credits, total_usage=r.total_usage)
                            for r in readings(end, days))
        with sessions.begin() as session:
            while store.fold_readings_before(session, end - timedelta(days=raw_days), 5000):
                pass
    finally:
        engine.dispose()


def stored(url: str, start: datetime, end: datetime, account: str = "default") -> list[Reading]:
    """What creditwatch reads for a chart of [start, end]: raw readings, rollup points before them."""
    engine = db.make_engine(url)
    try:
        with store.sessions(engine)() as session:
            return store.history_between(session, account, start, end)
    finally:
        engine.dispose()


def latest(url: str, account: str = "default") -> Reading | None:
    engine = db.make_engine(url)
    try:
        with store.sessions(engine)() as session:
            return store.latest_reading(session, account)
    finally:
        engine.dispose()
