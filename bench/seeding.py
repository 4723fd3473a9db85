"""Stored history written in bulk, row for row as ticks would have written it.

The ORM would take minutes for a million rows; plain executemany on the DBAPI
connection takes seconds. The timestamps must then be formatted the way the
UTCDateTime column stores them, which `check_timestamp_format` proves against
the dialect's own bind processor before anything is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.types import TypeEngine

from worker.tables import FetchAttemptRow, ReadingRow

# timeline is left to its server default, 0: what the tick stores while the clock never stepped back.
INSERT_READING = "INSERT INTO readings (fetched_at, total_credits, total_usage) VALUES (?, ?, ?)"
# kind 'ok', no message, streak 0: what record_fetch writes for a successful fetch.
INSERT_ATTEMPT = ("INSERT INTO fetch_attempts (at, kind, message, streak, streak_auth) "
                  "VALUES (?, 'ok', NULL, 0, 0)")


@dataclass(frozen=True)
class Series:
    """A balance read every `step` from `start`, spending steadily, so burn and runway are known."""

    credits: float
    start: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    step: timedelta = timedelta(minutes=1)
    spend_per_step: float = 0.01  # $0.60/h: far below the burn rule's $5/h

    def at(self, index: int) -> datetime:
        return self.start + index * self.step

    def usage(self, index: int) -> float:
        return round(index * self.spend_per_step, 6)


def stored_timestamp(at: datetime) -> str:
    """How UTCDateTime stores `at` on SQLite: naive UTC text with microseconds."""
    utc = at.astimezone(UTC)
    return f"{utc:%Y-%m-%d %H:%M:%S}.{utc.microsecond:06d}"


def check_timestamp_format(engine: Engine) -> None:
    """Fail loudly if stored_timestamp ever disagrees with the column type's own processor."""
    for column in (ReadingRow.__table__.c.fetched_at, FetchAttemptRow.__table__.c.at):
        _check_column(column.type, engine)


def _check_column(column_type: TypeEngine[datetime], engine: Engine) -> None:
    # dialect_impl: the processor of the type as this dialect runs it, SQLite's text format included.
    process = column_type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
    assert process is not None
    for sample in (datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 7, 9, 23, 59, 58, 123456, tzinfo=UTC)):
        if process(sample) != stored_timestamp(sample):
            msg = f"stored_timestamp gives {stored_timestamp(sample)!r}, the column {process(sample)!r}"
            raise AssertionError(msg)


def insert_history(engine: Engine, series: Series, first: int, count: int) -> None:
    """Readings first..first+count-1 of the series and one ok attempt each, in one transaction."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert isinstance(conn, sqlite3.Connection), "the bench seeds SQLite files only"
        # make_engine puts pysqlite in autocommit mode and issues BEGIN itself; so do we.
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_READING, _readings(series, first, count))
        conn.executemany(INSERT_ATTEMPT, ((stamp,) for stamp, _, _ in _readings(series, first, count)))
        conn.execute("COMMIT")
    finally:
        raw.close()


def _readings(series: Series, first: int, count: int) -> Iterator[tuple[str, float, float]]:
    # A generator: a million tuples held at once would cost ~200 MB for nothing.
    at = series.at(first)
    for index in range(first, first + count):
        yield stored_timestamp(at), series.credits, series.usage(index)
        at += series.step
