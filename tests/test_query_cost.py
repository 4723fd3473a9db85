"""Per-tick queries stay index range scans: the work of a tick does not grow with history.

SQLite counts the virtual-machine instructions it executes; a progress handler called
every 100 of them gives a deterministic measure of the rows a tick examines. A tick on
a database with 30 times more history (same 6-hour window) must cost about the same:
a query that turned into a full scan would multiply it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeOpenRouter
from sqlalchemy import Engine, event

from worker import db
from worker.app import build
from worker.redact import Redactor
from worker.settings import parse_settings
from worker.tick import Deps, run_tick

KEY = "sk-or-v1-query-cost-0001"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=1)
SETTINGS = """
[openrouter]
base_url = "{base}"
timeout = "2s"
[database]
url = "sqlite:///{path}"
[[channels]]
name = "a"
url = "json://127.0.0.1:9/a"
[[channels]]
name = "b"
url = "json://127.0.0.1:9/b"
[[rules]]
name = "low"
type = "threshold"
below = 1.0
[[rules]]
name = "low-percent"
type = "threshold"
below_percent = 1
[[rules]]
name = "fast-burn"
type = "burn_rate"
window = "1h"
short_window = "5m"
above = 1000.0
[[rules]]
name = "short-runway"
type = "runway"
window = "6h"
below = "1h"
"""


def _seed(engine: Engine, count: int) -> None:
    """`count` one-minute readings and ok attempts ending just before NOW, as ticks write them."""
    times = [NOW - STEP * (count - i) for i in range(count)]
    raw = engine.raw_connection()
    try:
        fmt = "%Y-%m-%d %H:%M:%S.%f"
        raw.cursor().executemany(
            "INSERT INTO readings (fetched_at, total_credits, total_usage, timeline) VALUES (?, ?, ?, 0)",
            [(t.strftime(fmt), 1_000_000.0, i * 0.01) for i, t in enumerate(times)])
        raw.cursor().executemany(
            "INSERT INTO fetch_attempts (at, kind, message, streak, streak_auth) VALUES (?, 'ok', NULL, 0, 0)",
            [(t.strftime(fmt),) for t in times])
        raw.commit()
    finally:
        raw.close()


class StepCounter:
    """Counts SQLite VM instructions (in hundreds) on every connection of an engine."""

    def __init__(self, engine: Engine) -> None:
        self.steps = 0
        event.listen(engine, "connect", self._install)

    def _install(self, dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.set_progress_handler(self._count, 100)

    def _count(self) -> int:
        self.steps += 1
        return 0  # 0: carry on


@pytest.fixture
def make_deps(tmp_path: Path, fake_api: FakeOpenRouter) -> Iterator[Any]:
    engines: list[Engine] = []

    def make(history: int) -> tuple[Deps, StepCounter]:
        path = tmp_path / f"h{history}.db"
        settings = parse_settings(SETTINGS.format(base=fake_api.base_url, path=path), {})
        engine = db.make_engine(settings.database.url.get_secret_value())
        engines.append(engine)
        db.upgrade(engine)
        _seed(engine, history)
        engine.dispose()  # new connections get the counter
        counter = StepCounter(engine)
        deps = build(settings, {"OPENROUTER_API_KEY": KEY}, redact=Redactor([KEY]), engine=engine).deps
        return deps, counter

    yield make
    for engine in engines:
        engine.dispose()


def _steps_per_tick(deps: Deps, counter: StepCounter, ticks: int = 5) -> float:
    run_tick(deps, NOW)  # the first tick also runs retention; measure the steady state
    counter.steps = 0
    for i in range(1, ticks + 1):
        run_tick(deps, NOW + STEP * i)
    return counter.steps / ticks


def test_a_tick_examines_as_many_rows_with_30x_the_history(
        make_deps: Any, fake_api: FakeOpenRouter) -> None:
    fake_api.set_balance(1_000_000.0, 10.0)
    small = _steps_per_tick(*make_deps(1_000))
    large = _steps_per_tick(*make_deps(30_000))
    assert small > 0
    assert large / small <= 1.25, f"VM steps per tick: {small:.0f}00 with 1k readings, {large:.0f}00 with 30k"


def test_retention_with_nothing_to_prune_examines_as_many_rows(
        make_deps: Any, fake_api: FakeOpenRouter) -> None:
    fake_api.set_balance(1_000_000.0, 10.0)
    costs = []
    for history in (1_000, 30_000):
        deps, counter = make_deps(history)
        run_tick(deps, NOW)
        deps.retention.last_run = None  # force the hourly retention pass into the next tick
        run_tick(deps, NOW + STEP)
        deps.retention.last_run = None
        counter.steps = 0
        run_tick(deps, NOW + 2 * STEP)
        costs.append(counter.steps)
    assert costs[1] / costs[0] <= 1.25, f"VM steps of a tick with retention: {costs}"
