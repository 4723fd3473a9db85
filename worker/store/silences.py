"""Silences: rules whose messages are held back for a while.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from worker.domain import Silence
from worker.store.base import _delete_batch, plain
from worker.tables import SilenceRow


def add_silence(session: Session, rule: str, account: str | None, starts_at: datetime, ends_at: datetime,
                comment: str, now: datetime) -> int:
    """Store a silence; its id."""
    row = SilenceRow(rule=rule, account=account, starts_at=starts_at, ends_at=ends_at,
                     comment=comment[:500], created_at=now)
    session.add(row)
    session.flush()
    return row.id


# A silence's columns, plain (no ORM objects), in the order of Silence's fields.
_ALL = select(SilenceRow.id, SilenceRow.rule, SilenceRow.account, SilenceRow.starts_at, SilenceRow.ends_at,
              SilenceRow.comment).order_by(SilenceRow.id)
_NOT_ENDED = _ALL.where(SilenceRow.ends_at > bindparam("now"))


def silences(session: Session, now: datetime | None = None) -> list[Silence]:
    """Every stored silence (or, given `now`, those that have not ended), oldest first."""
    conn = plain(session)
    rows = (conn.execute(_ALL) if now is None else conn.execute(_NOT_ENDED, {"now": now})).all()
    return [Silence(*row) for row in rows]


def _silence(row: SilenceRow) -> Silence:
    return Silence(row.id, row.rule, row.account, row.starts_at, row.ends_at, row.comment)


def expire_silence(session: Session, silence_id: int, now: datetime) -> Silence | None:
    """End a silence now; the silence as it was, or None if there is no such silence."""
    row = session.get(SilenceRow, silence_id)
    if row is None:
        return None
    before = _silence(row)
    session.execute(update(SilenceRow).where(SilenceRow.id == silence_id, SilenceRow.ends_at > now)
                    .values(ends_at=now).execution_options(synchronize_session=False))
    return before


def delete_silences_before(session: Session, cutoff: datetime, batch: int) -> int:
    """Silences that ended before `cutoff` (pruned with the rest of the old data)."""
    return _delete_batch(session, SilenceRow, SilenceRow.ends_at < cutoff, SilenceRow.ends_at, batch)
