"""The outbox: messages queued per channel, claimed in order, delivered or dropped.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from worker.domain import (
    Message,
)
from worker.sendpolicy import UNDELIVERED, Backlog, Head, OutboxStatus, Outgoing
from worker.store.base import _delete_batch, plain
from worker.tables import (
    OutboxRow,
)

_UNDELIVERED = [s.value for s in UNDELIVERED]


def enqueue(session: Session, messages: Sequence[Message], now: datetime) -> None:
    for m in messages:
        session.add(
            OutboxRow(
                created_at=now, account=m.account, rule=m.rule, channel=m.channel, reason=m.reason.value,
                severity=m.severity.value, key=m.key, title=m.title, body=m.body,
                notify_type=m.notify_type, status=OutboxStatus.PENDING.value, attempts=0,
                attachment=m.attachment,
            )
        )


# Run once a tick each (delivery, the tick's snapshot): built once, plain rows.
_CHANNELS_WAITING = select(OutboxRow.channel).distinct().where(OutboxRow.status.in_(_UNDELIVERED))
_BACKLOG_COUNTS = (
    select(OutboxRow.channel, func.count()).where(OutboxRow.status.in_(_UNDELIVERED))
    .group_by(OutboxRow.channel)
)


def channels_waiting(session: Session) -> set[str]:
    """The channels that have at least one undelivered message (one index scan)."""
    return set(plain(session).execute(_CHANNELS_WAITING).scalars().all())


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
        select(OutboxRow.key, OutboxRow.title, OutboxRow.body, OutboxRow.notify_type, OutboxRow.attachment)
        .where(OutboxRow.id == seen.id)
    ).one()
    return Outgoing(seen.id, seen.channel, row.key, row.title, row.body, row.notify_type, seen.attempts + 1,
                    row.attachment)


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
    return {str(channel): int(count) for channel, count in plain(session).execute(_BACKLOG_COUNTS).all()}


def delete_finished_messages_before(session: Session, cutoff: datetime, batch: int) -> int:
    """Delivered and dropped outbox rows that ended before `cutoff`."""
    delivered = (OutboxRow.status == OutboxStatus.DELIVERED.value) & (OutboxRow.delivered_at < cutoff)
    dropped = (OutboxRow.status == OutboxStatus.DROPPED.value) & (OutboxRow.dropped_at < cutoff)
    return (_delete_batch(session, OutboxRow, delivered, OutboxRow.delivered_at, batch)
            + _delete_batch(session, OutboxRow, dropped, OutboxRow.dropped_at, batch))
