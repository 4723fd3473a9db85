"""Balance readings, fetch attempts and hourly rollups, per account.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from itertools import takewhile

from sqlalchemy import Connection, bindparam, delete, func, select
from sqlalchemy.orm import Session

from worker.domain import (
    CLOCK_STEP,
    FetchKind,
    FetchOutcome,
    FetchRecord,
    FetchStreak,
    Reading,
)
from worker.rollup import Rollup, fold, hour_of
from worker.store.base import _delete_batch, plain
from worker.tables import (
    FetchAttemptRow,
    ReadingRow,
    RollupRow,
)

# The per-tick statements, built once: building and hashing a statement costs about as
# much as running it. They run on plain(session) and read plain columns, not ORM objects.
_LATEST = (
    select(ReadingRow.fetched_at, ReadingRow.total_credits, ReadingRow.total_usage, ReadingRow.timeline)
    .where(ReadingRow.account == bindparam("account")).order_by(ReadingRow.id.desc()).limit(1)
)
_LAST_STREAK = (
    select(FetchAttemptRow.streak, FetchAttemptRow.streak_auth)
    .where(FetchAttemptRow.account == bindparam("account")).order_by(FetchAttemptRow.id.desc()).limit(1)
)
_WINDOW = (
    select(ReadingRow.fetched_at, ReadingRow.total_credits, ReadingRow.total_usage)
    .where(ReadingRow.fetched_at >= bindparam("start"), ReadingRow.fetched_at <= bindparam("end"),
           ReadingRow.account == bindparam("account"))
    .order_by(ReadingRow.id)
)
_TIMELINE_WINDOW = _WINDOW.where(ReadingRow.timeline == bindparam("timeline"))
# MIN over an indexed column: an index walk from the oldest row to the timeline's first.
_TIMELINE_OLDEST = select(func.min(ReadingRow.fetched_at)).where(
    ReadingRow.account == bindparam("account"), ReadingRow.timeline == bindparam("timeline"))


def record_fetch(session: Session, account: str, now: datetime, outcome: FetchOutcome,
                 attempt: FetchOutcome | None = None) -> FetchStreak:
    """Store the account's attempt, and its reading when the balance was read; return the
    failure streak it makes. `attempt` is how the tick's reading went when it differs from the
    balance fetch's own outcome (the keys could not be read)."""
    attempt = attempt or outcome
    conn = plain(session)
    # Added, not executed: the rows are written when the session flushes, as callers expect.
    if outcome.ok:
        session.add(ReadingRow(account=account, fetched_at=now, total_credits=outcome.total_credits,
                               total_usage=outcome.total_usage, timeline=_timeline_for(conn, account, now)))
    # An ok attempt ends any streak: only a failed one reads the streak it extends.
    streak = FetchStreak() if attempt.ok else _extended(conn, account, attempt)
    session.add(FetchAttemptRow(account=account, at=now, kind=attempt.kind.value,
                                message=attempt.message[:500] or None, streak=streak.failures,
                                streak_auth=streak.auth))
    return streak


def _extended(conn: Connection, account: str, failed: FetchOutcome) -> FetchStreak:
    """The streak of the account's newest attempt, one failure longer."""
    previous = conn.execute(_LAST_STREAK, {"account": account}).first()
    before, auth_before = (previous.streak, bool(previous.streak_auth)) if previous else (0, False)
    return FetchStreak(before + 1, auth_before or failed.kind is FetchKind.AUTH, failed.message)


def _timeline_for(conn: Connection, account: str, now: datetime) -> int:
    """The timeline of a reading stored at `now`: the clock-step mechanism. A reading stored
    more than CLOCK_STEP before the one stored before it starts a new timeline."""
    latest = _latest(conn, account)
    if latest is None:
        return 0
    reading, timeline = latest
    stepped_back = now < reading.fetched_at - CLOCK_STEP
    return timeline + 1 if stepped_back else timeline


def _latest(conn: Connection, account: str) -> tuple[Reading, int] | None:
    """The account's newest reading and its timeline."""
    row = conn.execute(_LATEST, {"account": account}).first()
    if row is None:
        return None
    at, credits, usage, timeline = row
    return Reading(at, credits, usage), timeline


def last_fetch(session: Session, account: str) -> FetchRecord | None:
    """The account's newest fetch attempt, ok or not."""
    row = session.scalars(
        select(FetchAttemptRow).where(FetchAttemptRow.account == account)
        .order_by(FetchAttemptRow.id.desc()).limit(1)
    ).first()
    return FetchRecord(row.at, FetchKind(row.kind), row.message) if row else None


def latest_reading(session: Session, account: str) -> Reading | None:
    latest = _latest(plain(session), account)
    return latest[0] if latest else None


def readings_between(session: Session, account: str, start: datetime, end: datetime,
                     timeline: int | None = None) -> list[Reading]:
    """The account's readings with start <= fetched_at <= end in the order they were stored
    (which is time order unless the wall clock stepped back): an index range scan."""
    return _readings_between(plain(session), account, start, end, timeline)


def _readings_between(conn: Connection, account: str, start: datetime, end: datetime,
                      timeline: int | None) -> list[Reading]:
    # Plain columns, not ORM objects: building ~360 objects a tick was most of its cost.
    # all(): one fetch for the ~360 rows; iterating the result would fetch them one by one.
    params = {"account": account, "start": start, "end": end}
    if timeline is None:
        rows = conn.execute(_WINDOW, params).all()
    else:
        rows = conn.execute(_TIMELINE_WINDOW, params | {"timeline": timeline}).all()
    return [Reading(at, credits, usage) for at, credits, usage in rows]


def history_between(session: Session, account: str, start: datetime, end: datetime) -> list[Reading]:
    """Readings in the window, reaching into hourly rollups where raw data has been folded."""
    raw = readings_between(session, account, start, end)
    # MIN over an indexed column: an index walk from the oldest row to the account's first.
    oldest = session.scalar(select(func.min(ReadingRow.fetched_at)).where(ReadingRow.account == account))
    return _with_rollups(session, account, raw, oldest, start, end)


def forecast_history(session: Session, account: str, start: datetime, end: datetime) -> list[Reading]:
    """The window as the forecast sees it: only the readings stored since the wall
    clock last stepped back (and rollups only while it never has)."""
    conn = plain(session)
    latest = _latest(conn, account)
    if latest is None:
        return []
    _, timeline = latest
    raw = _readings_between(conn, account, start, end, timeline)
    if timeline > 0:
        return raw
    oldest = conn.execute(_TIMELINE_OLDEST, {"account": account, "timeline": 0}).scalar()
    return _with_rollups(session, account, raw, oldest, start, end)


def _with_rollups(session: Session, account: str, raw: list[Reading], oldest: datetime | None,
                  start: datetime, end: datetime) -> list[Reading]:
    if oldest is not None and oldest <= start:
        return raw  # the raw data covers the whole window: the common case
    until = end if oldest is None else min(end, oldest)
    older = [p for p in _rollup_points(session, account, start, until)
             if oldest is None or p.fetched_at < oldest]
    return older + raw


def fold_readings_before(session: Session, cutoff: datetime, batch: int) -> int:
    """Fold up to `batch` of the oldest readings before `cutoff` into their accounts' hourly rollups."""
    rows = session.execute(
        select(ReadingRow.id, ReadingRow.account, ReadingRow.fetched_at, ReadingRow.total_credits,
               ReadingRow.total_usage)
        .where(ReadingRow.fetched_at < cutoff).order_by(ReadingRow.fetched_at).limit(batch)
    ).all()
    if not rows:
        return 0
    by_account: dict[str, list[Reading]] = {}
    for _, account, at, credits, usage in rows:
        by_account.setdefault(account, []).append(Reading(at, credits, usage))
    for account, readings in by_account.items():
        hours = {hour_of(r.fetched_at) for r in readings}
        existing = {row.hour: _rollup(row) for row in session.scalars(
            select(RollupRow).where(RollupRow.account == account, RollupRow.hour.in_(hours)))}
        for roll in fold(readings, existing).values():
            session.merge(RollupRow(account=account, **asdict(roll)))
    session.execute(delete(ReadingRow).where(ReadingRow.id.in_([r.id for r in rows])))
    return len(rows)


def delete_rollups_before(session: Session, cutoff: datetime, batch: int) -> int:
    return _delete_batch(session, RollupRow, RollupRow.hour < cutoff, RollupRow.hour, batch)


def delete_attempts_before(session: Session, cutoff: datetime, batch: int) -> int:
    """Old fetch attempts, but never the newest: it carries the failure streak.

    Attempts are stored in time order, so this walks the primary key from the oldest and
    stops at the first attempt not older than `cutoff`: no index on `at` (it would cost as
    much room as the column itself), and a check with nothing to prune reads one row. An
    attempt stamped in the future by a clock step only holds back the ones stored after
    it, until its own time passes."""
    newest = session.scalar(select(func.max(FetchAttemptRow.id)))
    if newest is None:
        return 0
    oldest_first = session.execute(
        select(FetchAttemptRow.id, FetchAttemptRow.at).where(FetchAttemptRow.id < newest)
        .order_by(FetchAttemptRow.id).limit(batch)
    )
    ids = [row_id for row_id, _ in takewhile(lambda row: row[1] < cutoff, oldest_first)]
    if ids:
        session.execute(delete(FetchAttemptRow).where(FetchAttemptRow.id.in_(ids)))
    return len(ids)


def _rollup_points(session: Session, account: str, start: datetime, end: datetime) -> list[Reading]:
    """Readings reconstructed from the account's rollups whose hour overlaps [start, end], oldest first."""
    rows = session.scalars(
        select(RollupRow).where(RollupRow.account == account, RollupRow.hour >= start - timedelta(hours=1),
                                RollupRow.hour <= end)
        .order_by(RollupRow.hour)
    )
    return [p for row in rows for p in _rollup(row).points() if start <= p.fetched_at <= end]


def _rollup(row: RollupRow) -> Rollup:
    return Rollup(**{f: getattr(row, f) for f in Rollup.__dataclass_fields__})


