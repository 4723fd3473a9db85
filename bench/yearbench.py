"""The SQLite file after a year of one-minute ticks with the default retention.

A day of ticks is written in one bulk batch, row for row what the tick writes
(a reading and an ok attempt a minute); then retention runs as the ticks of
that day would have run it, until it has nothing left to do. 365 x 1,440 ticks
through run_tick would take hours; retention is the only part that shapes the
file, and it runs here exactly as in the service.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from seeding import Series, check_timestamp_format, insert_history
from table import MB, Figure
from testbed import CREDITS
from worker import db, store
from worker.retention import Pruned, prune

DAYS, PER_DAY = 365, 1_440
KEEP_RAW, KEEP_ROLLUPS = timedelta(days=30), timedelta(days=730)  # the defaults of [database]
TABLES = ("readings", "fetch_attempts", "rollups", "outbox", "alert_states")


@dataclass(frozen=True)
class Year:
    file_bytes: int
    counts: dict[str, int]
    pages: int
    free_pages: int
    page_size: int
    objects: list[tuple[str, int]]  # (table or index, bytes), largest first
    seconds: float


def simulate(folder: Path) -> Year:
    path = folder / "year.db"
    engine = db.make_engine(f"sqlite:///{path}")
    started = time.monotonic()
    try:
        db.upgrade(engine)
        check_timestamp_format(engine)
        _run_days(engine)
        stats = _checkpoint_and_count(engine)
    finally:
        engine.dispose()
    size = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    return Year(size, *stats, seconds=time.monotonic() - started)


def _run_days(engine: Engine) -> None:
    series = Series(CREDITS)
    sessions = store.sessions(engine)
    for day in range(DAYS):
        insert_history(engine, series, day * PER_DAY, PER_DAY)
        end_of_day = series.at((day + 1) * PER_DAY)
        # prune does a bounded amount per call, as each tick would; call until it is done.
        while prune(sessions, end_of_day, KEEP_RAW, KEEP_ROLLUPS) != Pruned():
            pass


def _checkpoint_and_count(engine: Engine) -> tuple[dict[str, int], int, int, int, list[tuple[str, int]]]:
    # The raw DBAPI connection is in autocommit mode; through SQLAlchemy the "begin"
    # hook would open BEGIN IMMEDIATE, inside which SQLite refuses to checkpoint.
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {t: _one(cursor, f"SELECT count(*) FROM {t}") for t in TABLES}
        pages, free, size = (_one(cursor, f"PRAGMA {name}")
                             for name in ("page_count", "freelist_count", "page_size"))
        objects = _objects(cursor)
        cursor.close()
    finally:
        raw.close()
    return counts, pages, free, size, objects


def _objects(cursor: Any) -> list[tuple[str, int]]:
    """Bytes per table and index, from SQLite's dbstat table where the library has it."""
    try:
        cursor.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
    except sqlite3.OperationalError:  # built without SQLITE_ENABLE_DBSTAT_VTAB
        return []
    return [(str(name), int(size)) for name, size in cursor.fetchall()]


def _one(cursor: Any, sql: str) -> int:
    cursor.execute(sql)
    return int(cursor.fetchone()[0])


def figure(year: Year) -> Figure:
    counts = ", ".join(f"{t} {n:,}" for t, n in year.counts.items())
    return Figure("SQLite file after a simulated year at a 1-minute interval, defaults",
                  year.file_bytes / MB, 10.0, "MB", 1,
                  f"db + -wal after PRAGMA wal_checkpoint(TRUNCATE); keep_raw 30d, keep_rollups 2y; "
                  f"{DAYS * PER_DAY:,} readings and attempts written in daily batches, prune() "
                  f"after each day until done; rows: {counts}; {year.pages:,} pages of "
                  f"{year.page_size:,} B, {year.free_pages:,} of them free; "
                  f"simulated in {year.seconds:.0f} s.")


def layout(year: Year) -> str:
    """Where the bytes of the year's file are, table by table and index by index."""
    if not year.objects:
        return "  (this SQLite library has no dbstat table)"
    return "\n".join(f"  {name:<36} {size / MB:6.2f} MB" for name, size in year.objects)
