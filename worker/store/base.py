"""Sessions, the tick's write transaction, and batched deletes: what every part of the store uses.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Table, delete, select, text
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from worker.db import PG_TICK_LOCK


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def tick_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One write transaction; on PostgreSQL, replicas' ticks take turns."""
    with factory.begin() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_TICK_LOCK})
        yield session


def plain(session: Session) -> Connection:
    """The session's connection, for the hot per-tick reads: run on it, a query returns
    plain rows and skips the ORM's per-statement and per-row work (about half the cost of a
    small query), in the same transaction. What the session holds is flushed first, as
    session.execute would. Reads only: a write run on it would escape the leader fence
    (store.lease notes writes from the session's executions); see table_of."""
    session.flush()
    return session.connection()


def table_of(entity: type[DeclarativeBase]) -> Table:
    """The Core table of an ORM class. Hot writes are statements on it, run by session.execute:
    through the session, so that the leader fence (store.lease) sees the transaction wrote,
    and on the table, so that they skip the ORM's bulk-write machinery."""
    table = entity.__table__
    assert isinstance(table, Table)
    return table


def _delete_batch(session: Session, table: Any, condition: ColumnElement[bool], order: Any,
                  batch: int) -> int:
    """Delete one batch; `order` must be the indexed column the condition bounds, so that
    a tick with nothing to prune reads one index entry, not the table."""
    key = table.__mapper__.primary_key[0]
    ids = list(session.scalars(select(key).where(condition).order_by(order).limit(batch)))
    if ids:
        session.execute(delete(table).where(key.in_(ids)))
    return len(ids)
