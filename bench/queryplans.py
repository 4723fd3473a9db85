"""What SQLite does per tick: VM steps counted on every connection, and each statement's plan."""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

PERIOD = 100  # VM instructions between two progress callbacks during a whole tick
STATEMENT_PERIOD = 10  # finer for single statements, most of which take a few hundred
_EXPLAINABLE = ("SELECT", "UPDATE", "DELETE")
Logged = tuple[str, Sequence[Any]]


class StepCounter:
    """Counts SQLite VM instructions (to the nearest PERIOD) on every connection of `engine`.

    The handler has to be installed on each DBAPI connection as the pool opens
    it, hence the "connect" listener; the tick's delivery threads use
    connections of their own, and their steps count too.
    """

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._calls = 0
        event.listen(engine, "connect", self._install)

    def _install(self, dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_progress_handler(self._on_progress, PERIOD)

    def _on_progress(self) -> int:
        with self._lock:
            self._calls += 1
        return 0  # non-zero would abort the statement

    def during(self, work: Callable[[], object]) -> float:
        """VM steps spent while `work` ran."""
        with self._lock:
            before = self._calls
        work()
        with self._lock:
            return float((self._calls - before) * PERIOD)


class StatementLog:
    """The statements `engine` sends to SQLite, with their parameters, while recording."""

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._on = False
        self._seen: dict[str, Sequence[Any]] = {}
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, parameters: Any,
                _context: Any, executemany: bool) -> None:
        with self._lock:
            if self._on and not executemany:
                self._seen.setdefault(statement, parameters)

    @contextmanager
    def recording(self) -> Iterator[None]:
        with self._lock:
            self._on = True
        try:
            yield
        finally:
            with self._lock:
                self._on = False

    def unique(self) -> list[Logged]:
        with self._lock:
            return list(self._seen.items())


@dataclass(frozen=True)
class StatementCost:
    """One per-tick statement: VM steps on the small and the large database, and its plan."""

    statement: str
    small_steps: int
    large_steps: int
    plan: list[str]

    @property
    def grows(self) -> bool:
        """More work on the large database than noise allows (a few hundred steps)."""
        return self.large_steps > self.small_steps * GROWTH + NOISE_STEPS


GROWTH = 1.25
NOISE_STEPS = 300


def statement_costs(small_db: str, large_db: str, small: Sequence[Logged],
                    large: Sequence[Logged]) -> list[StatementCost]:
    """Each statement both ticks ran, re-run alone on its own database, with the large one's plan."""
    small_params = dict(small)
    with _connect(small_db) as small_conn, _connect(large_db) as large_conn:
        return [
            StatementCost(statement, _steps(small_conn, statement, small_params[statement]),
                          _steps(large_conn, statement, params), _plan(large_conn, statement, params))
            for statement, params in large
            if statement in small_params and statement.lstrip().upper().startswith(_EXPLAINABLE)
        ]


@contextmanager
def _connect(url: str) -> Iterator[sqlite3.Connection]:
    path = make_url(url).database
    with closing(sqlite3.connect(str(path), isolation_level=None)) as conn:
        yield conn


def _steps(conn: sqlite3.Connection, statement: str, parameters: Sequence[Any]) -> int:
    """VM steps of one statement, run inside a transaction that is rolled back."""
    calls = [0]

    def count() -> int:
        calls[0] += 1
        return 0

    conn.execute("BEGIN")
    conn.set_progress_handler(count, STATEMENT_PERIOD)
    try:
        conn.execute(statement, tuple(parameters)).fetchall()
    finally:
        conn.set_progress_handler(None, STATEMENT_PERIOD)
        conn.execute("ROLLBACK")  # UPDATE and DELETE too leave the data as the tick left it
    return calls[0] * STATEMENT_PERIOD


def _plan(conn: sqlite3.Connection, statement: str, parameters: Sequence[Any]) -> list[str]:
    rows = conn.execute(f"EXPLAIN QUERY PLAN {statement}", tuple(parameters)).fetchall()
    return [("  " if parent else "") + detail for _id, parent, _unused, detail in rows]


def render_costs(costs: Sequence[StatementCost], small_label: str, large_label: str) -> str:
    """Steps side by side, the statement, its plan; statements that grow are marked."""
    head = f"{small_label:>12}  {large_label:>12}  statement (plan on the large database below it)"
    lines = [head]
    for cost in costs:
        mark = "   <-- grows with history" if cost.grows else ""
        lines.append(f"{cost.small_steps:>12,}  {cost.large_steps:>12,}  {one_line(cost.statement)}{mark}")
        lines += [f"{'':>28}  {line}" for line in cost.plan]
    return "\n".join(lines)


def one_line(statement: str, width: int = 150) -> str:
    """The statement on one line, the column list elided: the plan depends on the rest."""
    flat = re.sub(r"\s+", " ", statement).strip()
    flat = re.sub(r"^SELECT (.{60,}?) FROM ", "SELECT ... FROM ", flat)
    return flat if len(flat) <= width else flat[: width - 3] + "..."
