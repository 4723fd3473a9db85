"""A client-side deadline on every database call of an engine.

A frozen PostgreSQL server (SIGSTOP, a hung VM, a partition where the kernel still
ACKs) never fires its own statement_timeout, and TCP keepalives stay quiet while the
peer's kernel answers. So each DBAPI call (execute, commit, rollback, pre-ping) is
registered with one watchdog thread per process; a call still running at its
deadline gets its connection abandoned: for psycopg the socket is shut down (the
blocked call returns at once with an error, and SQLAlchemy invalidates the
connection as a disconnect), for SQLite the statement is interrupted (the
connection stays usable). The caller sees a DBAPI OperationalError whose message
says the database did not answer in time, which SQLAlchemy wraps as usual.

The bound is per call, not per checkout: a connection may rightly be held for
longer (the migration lock is held across the whole upgrade; a caller may think
between statements), but no single call to the server may outlast the bound.
The first call that meets a frozen server fails within it, and the error ends
the tick.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

log = logging.getLogger("creditwatch.dbguard")

Abandon = Callable[[Any], None]


class DatabaseTimeout(Exception):
    """A database call outlived its client-side deadline (mixed into the driver's OperationalError)."""

    # psycopg: the socket was shut down, the connection is gone. SQLite: only interrupted.
    disconnects: ClassVar[bool] = False


def timeout_message(seconds: float, connecting: bool = False) -> str:
    """The one line an operator reads: what did not happen, within what, and where it was cut."""
    where = "on the client side, while connecting" if connecting else "on the client side"
    return f"the database did not answer within {seconds:g}s (timed out {where})"


class _Ticket:
    """One call in flight: armed until the call returns or the watchdog fires."""

    __slots__ = ("abandon", "conn", "fired", "live")

    def __init__(self, abandon: Abandon, conn: Any) -> None:
        self.abandon = abandon
        self.conn = conn
        self.live = True
        self.fired = False


class Watchdog:
    """One thread, one heap of (deadline, ticket); arming and disarming never start a thread."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, _Ticket]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._sleeps_until = math.inf

    def arm(self, seconds: float, abandon: Abandon, conn: Any) -> _Ticket:
        """Register a call that must end within `seconds`."""
        ticket = _Ticket(abandon, conn)
        deadline = time.monotonic() + seconds
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._seq), ticket))
            # Deadlines mostly grow, so the sleeping thread is rarely woken.
            if deadline < self._sleeps_until:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, daemon=True, name="cw-db-watchdog")
                    self._thread.start()
                self._wake.notify()
        return ticket

    def disarm(self, ticket: _Ticket) -> bool:
        """The call has returned; True when the watchdog abandoned its connection first."""
        # Under the lock: the watchdog abandons a connection only while the call is
        # still in flight, never after its connection went back to the pool.
        with self._lock:
            ticket.live = False
            return ticket.fired

    def _run(self) -> None:
        with self._lock:
            while True:
                heap = self._heap
                while heap and not heap[0][2].live:
                    heapq.heappop(heap)
                if not heap:
                    self._sleeps_until = math.inf
                    self._wake.wait()
                    continue
                deadline, _, ticket = heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._sleeps_until = deadline
                    self._wake.wait(deadline - now)
                    continue
                heapq.heappop(heap)
                ticket.live, ticket.fired = False, True
                _abandon(ticket)

    def _after_fork(self) -> None:
        # A forked child has no watchdog thread and may inherit a held lock.
        self._reset()


def _abandon(ticket: _Ticket) -> None:
    try:
        ticket.abandon(ticket.conn)
    except Exception as err:  # noqa: BLE001 - the watchdog must outlive a connection already gone
        log.debug("could not abandon a database connection: %r", err)


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._after_fork)


def _shut_socket(conn: Any) -> None:
    """psycopg: shut the socket down under libpq; its blocked wait returns with an error."""
    # A duplicate descriptor: closing our socket object must not close libpq's.
    dup = os.dup(conn.pgconn.socket)  # raises if the connection is already closed
    try:
        sock = socket.socket(fileno=dup)
    except OSError:
        os.close(dup)
        raise
    with sock:
        sock.shutdown(socket.SHUT_RDWR)


def _interrupt(conn: Any) -> None:
    """SQLite: the running statement stops with 'interrupted'; the connection stays usable."""
    conn.interrupt()


def _raw(conn: Any) -> Any:
    # do_commit/do_rollback receive the pool's proxy; the driver's connection is behind it.
    return getattr(conn, "dbapi_connection", conn)


class _Bound:
    """The calls of one engine, each run under the watchdog."""

    def __init__(self, seconds: float, abandon: Abandon, error: type[Exception]) -> None:
        self.seconds = seconds
        self.abandon = abandon
        self.error = error

    def call(self, conn: Any, fn: Callable[..., Any], *args: Any) -> Any:
        ticket = WATCHDOG.arm(self.seconds, self.abandon, conn)
        try:
            result = fn(*args)
        except BaseException as err:
            if WATCHDOG.disarm(ticket):
                raise self.error(timeout_message(self.seconds)) from err
            raise
        if WATCHDOG.disarm(ticket):
            # It fired as the call returned: the connection is abandoned all the same.
            raise self.error(timeout_message(self.seconds))
        return result


def bound_engine(engine: Engine, seconds: float) -> bool:
    """Put every DBAPI call of `engine` under a `seconds` client-side deadline.

    Supported: PostgreSQL through psycopg, and SQLite; False (nothing done) otherwise.
    """
    dialect: Any = engine.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        abandon, disconnects = _shut_socket, True
    elif dialect.name == "sqlite" and dialect.driver == "pysqlite":
        abandon, disconnects = _interrupt, False
    else:
        return False
    error = type("DatabaseTimeout", (DatabaseTimeout, dialect.loaded_dbapi.OperationalError),
                 {"__module__": __name__, "disconnects": disconnects})
    _wrap_dialect(dialect, _Bound(seconds, abandon, error))
    return True


def _wrap_dialect(dialect: Any, bound: _Bound) -> None:
    # SQLAlchemy has no event after commit, rollback or pre-ping, so the one place every
    # DBAPI call of this engine passes through is its own dialect instance (one per engine).
    do_execute, do_executemany = dialect.do_execute, dialect.do_executemany
    do_execute_no_params, do_commit = dialect.do_execute_no_params, dialect.do_commit
    do_rollback, do_ping = dialect.do_rollback, dialect.do_ping
    is_disconnect, connect = dialect.is_disconnect, dialect.connect
    call = bound.call

    def execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        call(cursor.connection, do_execute, cursor, statement, parameters, context)

    def executemany(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        call(cursor.connection, do_executemany, cursor, statement, parameters, context)

    def execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
        call(cursor.connection, do_execute_no_params, cursor, statement, context)

    def commit(conn: Any) -> None:
        call(_raw(conn), do_commit, conn)

    def rollback(conn: Any) -> None:
        call(_raw(conn), do_rollback, conn)

    def ping(conn: Any) -> bool:
        try:
            return bool(call(conn, do_ping, conn))
        except DatabaseTimeout as err:
            # Not a DBAPI error on purpose: the pool would take a failed ping for a
            # dropped connection and connect again, doubling the wait on a frozen server.
            raise sa_exc.OperationalError("SELECT 1 (pool pre-ping)", None, err,
                                          connection_invalidated=True) from None

    def disconnect(e: Any, connection: Any, cursor: Any) -> bool:
        if isinstance(e, DatabaseTimeout):
            return e.disconnects
        return bool(is_disconnect(e, connection, cursor))

    def connect_bounded(*cargs: Any, **cparams: Any) -> Any:
        try:
            return connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as err:
            # psycopg's own ConnectionTimeout (connect_timeout) says only "connection timeout expired".
            if type(err).__name__ != "ConnectionTimeout":
                raise
            seconds = float(cparams.get("connect_timeout", bound.seconds))
            raise bound.error(timeout_message(seconds, connecting=True)) from err

    for name, fn in (("do_execute", execute), ("do_executemany", executemany),
                     ("do_execute_no_params", execute_no_params), ("do_commit", commit),
                     ("do_rollback", rollback), ("do_ping", ping), ("is_disconnect", disconnect),
                     ("connect", connect_bounded)):
        setattr(dialect, name, fn)
