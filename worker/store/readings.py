"""Balance readings, fetch attempts and hourly rollups, per account.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from itertools import takewhile

from sqlalchemy import delete, func, select
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
from worker.store.base import _delete_batch
from worker.tables import (
    FetchAttemptRow,
    ReadingRow,
    RollupRow,
)


def record_fetch(session: Session, account: str, now: datetime, outcome: FetchOutcome,
                 attempt: FetchOutcome | None = None) -> FetchStreak:
    """Store the account's attempt, and its reading when the balance was read; return the
    failure streak it makes. `attempt` is how the tick's reading went when it differs from the
    balance fetch's own outcome (the keys could not be read)."""
    attempt = attempt or outcome
    previous = session.scalars(
        select(FetchAttemptRow).where(FetchAttemptRow.account == account)
        .order_by(FetchAttemptRow.id.desc()).limit(1)
    ).first()
    if outcome.ok:
        timeline = _timeline_for(session, account, now)
        session.add(ReadingRow(account=account, fetched_at=now, total_credits=outcome.total_credits,
                               total_usage=outcome.total_usage, timeline=timeline))
    outcome = attempt
    if outcome.ok:
        streak = FetchStreak()
    else:
        before = previous.streak if previous else 0
        auth_before = bool(previous and previous.streak_auth)
        streak = FetchStreak(before + 1, auth_before or outcome.kind is FetchKind.AUTH, outcome.message)
    session.add(
        FetchAttemptRow(
            account=account, at=now, kind=outcome.kind.value, message=outcome.message[:500] or None,
            streak=streak.failures, streak_auth=streak.auth,
        )
    )
    return streak


def _timeline_for(session: Session, account: str, now: datetime) -> int:
    """The timeline of a reading stored at `now`: the clock-step mechanism. A reading stored
    more than CLOCK_STEP before the one stored before it starts a new timeline."""
    latest = _latest_row(session, account)
    if latest is None:
        return 0
    stepped_back = now < latest.fetched_at - CLOCK_STEP
    return latest.timeline + 1 if stepped_back else latest.timeline


def _latest_row(session: Session, account: str) -> ReadingRow | None:
    return session.scalars(
        select(ReadingRow).where(ReadingRow.account == account).order_by(ReadingRow.id.desc()).limit(1)
    ).first()


def last_fetch(session: Session, account: str) -> FetchRecord | None:
    """The account's newest fetch attempt, ok or not."""
    row = session.scalars(
        select(FetchAttemptRow).where(FetchAttemptRow.account == account)
        .order_by(FetchAttemptRow.id.desc()).limit(1)
    ).first()
    return FetchRecord(row.at, FetchKind(row.kind), row.message) if row else None


def latest_reading(session: Session, account: str) -> Reading | None:
    row = _latest_row(session, account)
    return _reading(row) if row else None


def readings_between(session: Session, account: str, start: datetime, end: datetime,
                     timeline: int | None = None) -> list[Reading]:
    """The account's readings with start <= fetched_at <= end in the order they were stored
    (which is time order unless the wall clock stepped back): an index range scan."""
    # Plain columns, not ORM objects: building ~360 objects a tick was most of its cost.
    query = (
        select(ReadingRow.fetched_at, ReadingRow.total_credits, ReadingRow.total_usage)
        .where(ReadingRow.fetched_at >= start, ReadingRow.fetched_at <= end, ReadingRow.account == account)
        .order_by(ReadingRow.id)
    )
    if timeline is not None:
        query = query.where(ReadingRow.timeline == timeline)
    return [Reading(at, credits, usage) for at, credits, usage in session.execute(query)]


def history_between(session: Session, account: str, start: datetime, end: datetime) -> list[Reading]:
    """Readings in the window, reaching into hourly rollups where raw data has been folded."""
    raw = readings_between(session, account, start, end)
    # MIN over an indexed column: an index walk from the oldest row to the account's first.
    oldest = session.scalar(select(func.min(ReadingRow.fetched_at)).where(ReadingRow.account == account))
    return _with_rollups(session, account, raw, oldest, start, end)


def forecast_history(session: Session, account: str, start: datetime, end: datetime) -> list[Reading]:
    """The window as the forecast sees it: only the readings stored since the wall
    clock last stepped back (and rollups only while it never has)."""
    latest = _latest_row(session, account)
    if latest is None:
        return []
    raw = readings_between(session, account, start, end, latest.timeline)
    if latest.timeline > 0:
        return raw
    oldest = session.scalar(select(func.min(ReadingRow.fetched_at))
                            .where(ReadingRow.account == account, ReadingRow.timeline == 0))
    return _with_rollups(session, account, raw, oldest, start, end)


def _with_rollups(session: Session, account: str, raw: list[Reading], oldest: datetime | None,
                  start: datetime, end: datetime) -> list[Reading]:
    if oldest is not None and oldest <= start:
        return raw  # the raw data covers the whole window: the common case
    until = end if oldest is None else min(end, oldest)
    older = [p for p in _rollup_points(session, account, start, until)
             if oldest is None or p.fetched_at < oldest]
    return older + raw


def _reading(row: ReadingRow) -> Reading:
    return Reading(row.fetched_at, row.total_credits, row.total_usage)


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


