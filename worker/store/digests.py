"""Digest periods already queued, and what a digest reports of a period.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from worker.domain import Reason
from worker.messages import idempotency_key
from worker.store.alerts import STATES, state_of
from worker.tables import AlertStateRow, DigestRow, OutboxRow

_FIRST_REF = re.compile(r"^ref: (\S+/first)$", re.MULTILINE)


def newest_digest(session: Session) -> datetime | None:
    """The start of the newest period whose digest was queued."""
    return session.scalar(select(func.max(DigestRow.period_start)))


def mark_digest(session: Session, period_start: datetime, now: datetime) -> None:
    session.add(DigestRow(period_start=period_start, queued_at=now))


def fired_between(session: Session, account: str, start: datetime, end: datetime, named: bool) -> list[str]:
    """The refs (`rule#period/first`) of the alerts of `account` that started firing in
    [start, end), in order: those announced (a grouped message's every part included) and
    those that fired without a message (silenced, inhibited, no channel) and still stand."""
    bodies = session.scalars(
        select(OutboxRow.body).where(OutboxRow.account == account, OutboxRow.reason != Reason.DIGEST.value,
                                     OutboxRow.created_at >= start, OutboxRow.created_at < end))
    refs = {ref for body in bodies for ref in _FIRST_REF.findall(body)}
    standing = session.execute(
        STATES.where(AlertStateRow.account == account, AlertStateRow.firing_since >= start,
                     AlertStateRow.firing_since < end))
    refs.update(idempotency_key(state_of(row), Reason.FIRST, named) for row in standing)
    return sorted(refs)
