"""Every query creditwatch makes. Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, func, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from worker.db import PG_TICK_LOCK
from worker.domain import (
    CLOCK_STEP,
    AlertState,
    FetchKind,
    FetchOutcome,
    FetchRecord,
    FetchStreak,
    KeyRecord,
    Message,
    Reading,
    Severity,
    Status,
)
from worker.keybook import KeyPlan
from worker.rollup import Rollup, fold, hour_of
from worker.sendpolicy import UNDELIVERED, Backlog, Head, OutboxStatus, Outgoing
from worker.tables import (
    AlertStateRow,
    ApiKeyRow,
    FetchAttemptRow,
    KeyReadingRow,
    OutboxRow,
    ReadingRow,
    RollupRow,
)


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def tick_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One write transaction; on PostgreSQL, replicas' ticks take turns."""
    with factory.begin() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_TICK_LOCK})
        yield session


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


def load_states(session: Session, account: str) -> dict[tuple[str, str], AlertState]:
    """Every stored alert of the account, by (rule, key); an alert not stored is inactive."""
    rows = session.scalars(select(AlertStateRow).where(AlertStateRow.account == account))
    return {(row.rule, row.key): _state(row) for row in rows}


def _state(row: AlertStateRow) -> AlertState:
    return AlertState(
        rule=row.rule, status=Status(row.status), pending_since=row.pending_since,
        firing_since=row.firing_since, last_sent_at=row.last_sent_at,
        period=row.period, repeats=row.repeats, summary=row.summary,
        account=row.account, key=row.key, key_name=row.key_name,
    )


def save_state(session: Session, state: AlertState, severity: Severity, now: datetime) -> None:
    row = session.get(AlertStateRow, state.identity) or AlertStateRow(
        account=state.account, rule=state.rule, key=state.key)
    row.key_name = state.key_name[:300]
    row.status = state.status.value
    row.severity = severity.value
    row.pending_since = state.pending_since
    row.firing_since = state.firing_since
    row.last_sent_at = state.last_sent_at
    row.period = state.period
    row.repeats = state.repeats
    row.summary = state.summary[:500]
    row.updated_at = now
    session.add(row)


def enqueue(session: Session, messages: Sequence[Message], now: datetime) -> None:
    for m in messages:
        session.add(
            OutboxRow(
                created_at=now, account=m.account, rule=m.rule, channel=m.channel, reason=m.reason.value,
                severity=m.severity.value, key=m.key, title=m.title, body=m.body,
                notify_type=m.notify_type, status=OutboxStatus.PENDING.value, attempts=0,
            )
        )


_UNDELIVERED = [s.value for s in UNDELIVERED]


def channels_waiting(session: Session) -> set[str]:
    """The channels that have at least one undelivered message (one index scan)."""
    query = select(OutboxRow.channel).distinct().where(OutboxRow.status.in_(_UNDELIVERED))
    return set(session.scalars(query))


def head(session: Session, channel: str) -> Head | None:
    """The channel's oldest undelivered message: the only one that may be sent next."""
    row = session.scalars(
        select(OutboxRow).where(OutboxRow.channel == channel, OutboxRow.status.in_(_UNDELIVERED))
        .order_by(OutboxRow.id).limit(1)
    ).first()
    return _head(row) if row else None


def _head(row: OutboxRow) -> Head:
    return Head(
        id=row.id, channel=row.channel, key=row.key, status=OutboxStatus(row.status),
        attempts=row.attempts, created_at=row.created_at, claimed_until=row.claimed_until,
        claimed_by=row.claimed_by, next_try_at=row.next_try_at, last_error=row.last_error,
    )


def _unchanged(seen: Head) -> ColumnElement[bool]:
    """The row is still as `seen` read it: every claim bumps attempts, every outcome the status."""
    return (OutboxRow.id == seen.id) & (OutboxRow.status == seen.status.value) \
        & (OutboxRow.attempts == seen.attempts)


def claim(session: Session, seen: Head, now: datetime, lease: timedelta, me: str) -> Outgoing | None:
    """Take the head for sending with a conditional UPDATE; None if anyone moved it first."""
    result = session.execute(
        update(OutboxRow).where(_unchanged(seen))
        .values(status=OutboxStatus.SENDING.value, claimed_until=now + lease, claimed_by=me,
                attempts=OutboxRow.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = session.execute(
        select(OutboxRow.key, OutboxRow.title, OutboxRow.body, OutboxRow.notify_type)
        .where(OutboxRow.id == seen.id)
    ).one()
    return Outgoing(seen.id, seen.channel, row.key, row.title, row.body, row.notify_type, seen.attempts + 1)


def mark_delivered(session: Session, row_id: int, now: datetime) -> None:
    """Record the channel's acceptance (whoever holds the claim by now: it was sent)."""
    session.execute(
        update(OutboxRow).where(OutboxRow.id == row_id, OutboxRow.status.in_(_UNDELIVERED))
        .values(status=OutboxStatus.DELIVERED.value, delivered_at=now, claimed_until=None,
                claimed_by=None, next_try_at=None, last_error=None)
        .execution_options(synchronize_session=False)
    )


def mark_failed(session: Session, row_id: int, me: str, reason: str, next_try_at: datetime) -> None:
    """Record a failed try of our claim and when the channel may try again."""
    session.execute(
        update(OutboxRow)
        .where(OutboxRow.id == row_id, OutboxRow.status == OutboxStatus.SENDING.value,
               OutboxRow.claimed_by == me)
        .values(status=OutboxStatus.FAILED.value, claimed_until=None, claimed_by=None,
                next_try_at=next_try_at, last_error=reason[:500])
        .execution_options(synchronize_session=False)
    )


def drop(session: Session, seen: Head, now: datetime) -> bool:
    """Give up on the head (never sent); False if it moved meanwhile."""
    result = session.execute(
        update(OutboxRow).where(_unchanged(seen))
        .values(status=OutboxStatus.DROPPED.value, dropped_at=now, claimed_until=None, claimed_by=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def drop_channels_except(session: Session, keep: Iterable[str], now: datetime) -> list[tuple[str, str]]:
    """Drop every undelivered message of a channel not in `keep`; (channel, key) of each."""
    names = list(keep)
    rows = session.execute(
        select(OutboxRow.id, OutboxRow.channel, OutboxRow.key)
        .where(OutboxRow.status.in_(_UNDELIVERED), OutboxRow.channel.not_in(names))
        .order_by(OutboxRow.id)
    ).all()
    if rows:
        session.execute(
            update(OutboxRow).where(OutboxRow.id.in_([r.id for r in rows]))
            .values(status=OutboxStatus.DROPPED.value, dropped_at=now, claimed_until=None,
                    claimed_by=None)
            .execution_options(synchronize_session=False)
        )
    return [(r.channel, r.key) for r in rows]


def backlog(session: Session) -> list[Backlog]:
    """Per channel with undelivered messages: how many, and where its oldest stands."""
    counts = session.execute(
        select(OutboxRow.channel, func.count()).where(OutboxRow.status.in_(_UNDELIVERED))
        .group_by(OutboxRow.channel).order_by(OutboxRow.channel)
    ).all()
    out = []
    for channel, count in counts:
        first = head(session, channel)
        assert first is not None
        out.append(Backlog(channel, int(count), first))
    return out


def undelivered_count(session: Session) -> int:
    query = select(func.count()).select_from(OutboxRow).where(OutboxRow.status.in_(_UNDELIVERED))
    return int(session.scalar(query) or 0)


def backlog_counts(session: Session) -> dict[str, int]:
    """Undelivered messages per channel (one grouped index scan)."""
    rows = session.execute(
        select(OutboxRow.channel, func.count()).where(OutboxRow.status.in_(_UNDELIVERED))
        .group_by(OutboxRow.channel)
    ).all()
    return {str(channel): int(count) for channel, count in rows}


# -- retention: each function does one batch, in the caller's transaction ---------------------


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
    """Old fetch attempts, but never the newest: it carries the failure streak."""
    newest = session.scalar(select(func.max(FetchAttemptRow.id)))
    if newest is None:
        return 0
    old = (FetchAttemptRow.at < cutoff) & (FetchAttemptRow.id < newest)
    return _delete_batch(session, FetchAttemptRow, old, FetchAttemptRow.at, batch)


def delete_finished_messages_before(session: Session, cutoff: datetime, batch: int) -> int:
    """Delivered and dropped outbox rows that ended before `cutoff`."""
    delivered = (OutboxRow.status == OutboxStatus.DELIVERED.value) & (OutboxRow.delivered_at < cutoff)
    dropped = (OutboxRow.status == OutboxStatus.DROPPED.value) & (OutboxRow.dropped_at < cutoff)
    return (_delete_batch(session, OutboxRow, delivered, OutboxRow.delivered_at, batch)
            + _delete_batch(session, OutboxRow, dropped, OutboxRow.dropped_at, batch))


def _delete_batch(session: Session, table: Any, condition: ColumnElement[bool], order: Any,
                  batch: int) -> int:
    """Delete one batch; `order` must be the indexed column the condition bounds, so that
    a tick with nothing to prune reads one index entry, not the table."""
    key = table.__mapper__.primary_key[0]
    ids = list(session.scalars(select(key).where(condition).order_by(order).limit(batch)))
    if ids:
        session.execute(delete(table).where(key.in_(ids)))
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


# -- API keys -----------------------------------------------------------------------------------


def load_keys(session: Session, account: str) -> dict[str, KeyRecord]:
    """The account's keys as last written, by id."""
    rows = session.scalars(select(ApiKeyRow).where(ApiKeyRow.account == account))
    return {row.key_id: _key_record(row) for row in rows}


def _key_record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(row.key_id, row.name, row.label, row.limit, row.limit_remaining, row.limit_reset,
                     row.usage, row.usage_daily, row.usage_weekly, row.usage_monthly, row.seen_at)


def save_keys(session: Session, account: str, planned: KeyPlan) -> None:
    """Write the plan: current rows upserted, a history row each, forgotten keys deleted."""
    if planned.gone:
        session.execute(delete(ApiKeyRow).where(ApiKeyRow.account == account,
                                                ApiKeyRow.key_id.in_(planned.gone)))
    if not planned.write:
        return
    ids = [r.id for r in planned.write]
    session.execute(delete(ApiKeyRow).where(ApiKeyRow.account == account, ApiKeyRow.key_id.in_(ids)))
    current = [_key_row(account, r) for r in planned.write]
    session.execute(insert(ApiKeyRow), current)
    history = [{k: v for k, v in row.items() if k not in ("name", "label", "limit_reset", "seen_at")}
               | {"fetched_at": row["seen_at"]} for row in current]
    session.execute(insert(KeyReadingRow), history)


def _key_row(account: str, r: KeyRecord) -> dict[str, Any]:
    return {"account": account, "key_id": r.id, "name": r.name[:200], "label": r.label[:100],
            "limit": r.limit, "limit_remaining": r.limit_remaining, "limit_reset": r.limit_reset,
            "usage": r.usage, "usage_daily": r.usage_daily, "usage_weekly": r.usage_weekly,
            "usage_monthly": r.usage_monthly, "seen_at": r.seen_at}


def delete_key_readings_before(session: Session, cutoff: datetime, batch: int) -> int:
    return _delete_batch(session, KeyReadingRow, KeyReadingRow.fetched_at < cutoff, KeyReadingRow.fetched_at,
                         batch)
