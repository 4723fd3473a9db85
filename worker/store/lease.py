"""The leader lease row, the database's clock, and the fence on a leader's writes.
Functions take a Session; the caller owns the transaction.

Why a lease row and not a session-level advisory lock: such a lock lives as long as one
server connection. A pool that recycles the connection, a pooler (pgbouncer in
transaction mode) that hands it to another client, or a killed backend ends it without
the holder knowing, and a holder whose TCP connection dropped silently keeps acting until
its keepalives notice, while the server has already let another replica lock. A row with
an expiry and an epoch survives reconnects, and the epoch, checked in the same
transaction as each write, makes a stale leader's writes fail instead of trusting it to
know it is stale.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker
from sqlalchemy.sql.elements import TextClause

from worker.lease import Lease, LostLease
from worker.store.base import sessions
from worker.tables import LeaseRow

NAME = "leader"  # the one lease row
_WROTE = "creditwatch_wrote"  # session.info: this transaction has written


def database_now(session: Session) -> datetime:
    """The database's clock (aware UTC): the one clock every replica agrees on."""
    return _as_utc(session.execute(select(_now_expression(session))).scalar_one())


def read_lease(session: Session) -> tuple[Lease, datetime]:
    """The lease as stored and the database's clock, read in one statement."""
    row = session.execute(select(LeaseRow.holder, LeaseRow.epoch, LeaseRow.since, LeaseRow.expires_at,
                                 _now_expression(session)).where(LeaseRow.name == NAME)).first()
    if row is None:  # the migration inserts it; only a hand-edited database lacks it
        _create(session)
        return Lease(), database_now(session)
    holder, epoch, since, expires_at, now = row
    return Lease(holder, int(epoch), since, expires_at), _as_utc(now)


def write_lease(session: Session, seen: Lease, new: Lease) -> bool:
    """Write `new` if the row is still exactly `seen` (a conditional UPDATE); False if another
    replica wrote it first."""
    result = session.execute(
        update(LeaseRow).where(LeaseRow.name == NAME, *_is(seen))
        .values(holder=new.holder, epoch=new.epoch, since=new.since, expires_at=new.expires_at)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def holds(session: Session, epoch: int, holder: str) -> bool:
    """Whether the lease is still `holder`'s under `epoch`; on PostgreSQL the row stays
    share-locked until the transaction ends, so no take can commit between this check and
    the caller's commit (SQLite's BEGIN IMMEDIATE already holds the whole database)."""
    query = (select(LeaseRow.epoch).where(LeaseRow.name == NAME, LeaseRow.epoch == epoch,
                                          LeaseRow.holder == holder).with_for_update(read=True))
    return session.execute(query).first() is not None


def _is(seen: Lease) -> list[ColumnElement[bool]]:
    def same(column: Any, value: object) -> ColumnElement[bool]:
        return column.is_(None) if value is None else column == value  # type: ignore[no-any-return]

    return [LeaseRow.epoch == seen.epoch, same(LeaseRow.holder, seen.holder),
            same(LeaseRow.expires_at, seen.expires_at)]


def _create(session: Session) -> None:
    try:
        with session.begin_nested():
            session.execute(insert(LeaseRow).values(name=NAME, epoch=0))
    except IntegrityError:
        pass  # another replica created it meanwhile


def _now_expression(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # CURRENT_TIMESTAMP has whole seconds only; 'now' is fixed for the whole statement.
        return func.strftime("%Y-%m-%d %H:%M:%f", "now")
    if dialect == "postgresql":
        return func.clock_timestamp()  # now() is the transaction's start
    return func.current_timestamp()


def _as_utc(value: datetime | str) -> datetime:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- the fence -------------------------------------------------------------------------------


@dataclass
class Fence:
    """The epoch this process writes under. Not enforced (`check`, `status`...): writes go
    through unchecked. Enforced (`run`): a transaction that wrote commits only while the
    database's lease is `holder`'s under `epoch`, else LostLease and it rolls back."""

    enforced: bool = False
    epoch: int | None = None
    holder: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def hold(self, epoch: int | None, holder: str) -> None:
        """Write under `epoch` from now on (None: this process does not lead)."""
        with self._lock:
            self.enforced, self.epoch, self.holder = True, epoch, holder

    def terms(self) -> tuple[bool, int | None, str]:
        with self._lock:
            return self.enforced, self.epoch, self.holder


def fenced(engine: Engine, fence: Fence) -> sessionmaker[Session]:
    """Sessions on `engine` whose transactions that wrote check `fence` right before they
    commit, in the same transaction (reads are never checked: a standby's status page still
    works). Every write path of the tick, the outbox and retention goes through them."""
    made = sessions(engine)
    event.listen(made, "do_orm_execute", _note_write)
    event.listen(made, "before_commit", lambda session: _check(session, fence))
    event.listen(made, "after_transaction_end", _forget_writes)
    return made


def _note_write(state: ORMExecuteState) -> None:
    statement = state.statement
    raw_write = isinstance(statement, TextClause) and not statement.text.lstrip().upper().startswith("SELECT")
    if state.is_insert or state.is_update or state.is_delete or raw_write:
        state.session.info[_WROTE] = True


def _check(session: Session, fence: Fence) -> None:
    enforced, epoch, holder = fence.terms()
    if not enforced:
        return
    wrote = session.info.get(_WROTE, False) or session.new or session.dirty or session.deleted
    if not wrote:
        return
    if epoch is None or not holds(session, epoch, holder):
        shown = "no epoch" if epoch is None else f"epoch {epoch}"
        msg = f"this replica ({shown}) no longer holds the leader lease: its write was rolled back"
        raise LostLease(msg)


def _forget_writes(session: Session, transaction: Any) -> None:
    if transaction.parent is None:
        session.info.pop(_WROTE, None)
