"""The in-process tick: its cost over a bare HTTP GET, and whether history length changes it.

Two databases tick side by side, one holding 1,000 stored readings and one
1,000,000, each with a matching fetch_attempts row per reading. The readings
are one interval apart and end one interval before the first timed tick, so
every tick sees the same window contents whatever the history length; only the
size of the tables differs. keep_raw is widened so that a million one-minute
readings (694 days) stay raw and retention has nothing to fold.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from queryplans import (
    StatementCost,
    StatementLog,
    StepCounter,
    one_line,
    render_costs,
    statement_costs,
)
from seeding import Series, check_timestamp_format, insert_history
from table import Figure, median
from testbed import API_KEY, CREDITS, Servers, load, settings_text, write_settings
from worker.snapshot import TickReport
from worker.tick import Deps, run_tick

SMALL, LARGE = 1_000, 1_000_000
KEEP_RAW, KEEP_ROLLUPS = "700d", "2y"  # a million 1-minute readings must stay raw (see above)
WARMUP, TIMED, COUNTED = 20, 200, 30


class BenchError(RuntimeError):
    """The benchmark itself went wrong (a tick fired, a fetch failed...): its figures mean nothing."""


@dataclass
class Bed:
    """A seeded database, the Deps that tick against it, and how far its series has got."""

    name: str
    config: Path
    deps: Deps
    series: Series
    servers: Servers
    next_index: int

    def tick(self, deps: Deps | None = None) -> float:
        """One tick at the series' next minute; returns its wall time in seconds."""
        index = self.next_index
        self.servers.api.set_balance(self.series.credits, self.series.usage(index))
        started = time.perf_counter()
        report = run_tick(deps or self.deps, self.series.at(index))
        elapsed = time.perf_counter() - started
        self.next_index += 1
        _check_quiet(self.name, report)
        return elapsed


def _check_quiet(name: str, report: TickReport) -> None:
    if not report.outcome.ok:
        msg = f"{name}: the fetch failed: {report.outcome.message}"
        raise BenchError(msg)
    if report.firing or report.transitions or report.delivered or report.failed:
        msg = f"{name}: the tick was meant to send nothing, yet: {report}"
        raise BenchError(msg)


def make_bed(folder: Path, srv: Servers, stored: int) -> Bed:
    """A migrated SQLite file in `folder` holding `stored` readings and attempts."""
    name = f"{stored}-readings"
    db_path = folder / f"{name}.db"
    text = settings_text(srv, db_path, keep_raw=KEEP_RAW, keep_rollups=KEEP_ROLLUPS)
    config = write_settings(folder, text, f"{name}.toml")
    app = load(config)
    app.migrate()
    check_timestamp_format(app.engine)
    series = Series(CREDITS)
    insert_history(app.engine, series, 0, stored)
    return Bed(name, config, app.deps, series, srv, stored)


@dataclass
class Timings:
    get: list[float] = field(default_factory=list)
    small: list[float] = field(default_factory=list)
    large: list[float] = field(default_factory=list)


def time_ticks(small: Bed, large: Bed, url: str) -> Timings:
    """Warm up, then interleave a bare GET, a small tick and a large tick, rotating their order.

    Interleaving spreads any drift of the machine (other load, frequency) over
    all three series instead of biasing whichever would have run last.
    """
    get = _bare_get(url)
    for _ in range(WARMUP):
        get()
        small.tick()
        large.tick()
    timings = Timings()
    steps: list[tuple[list[float], Callable[[], float]]] = [
        (timings.get, get), (timings.small, small.tick), (timings.large, large.tick)]
    for round_no in range(TIMED):
        for samples, step in steps[round_no % 3:] + steps[:round_no % 3]:
            samples.append(step())
    return timings


def _bare_get(url: str) -> Callable[[], float]:
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def once() -> float:
        started = time.perf_counter()
        response = requests.get(url, headers=headers, timeout=5)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    return once


@dataclass(frozen=True)
class Counted:
    small_steps: float
    large_steps: float
    statements: list[StatementCost]

    @property
    def growing(self) -> list[StatementCost]:
        return [c for c in self.statements if c.grows]

    def report(self) -> str:
        return render_costs(self.statements, f"{SMALL:,} rows", f"{LARGE:,} rows")


def count_steps(small: Bed, large: Bed) -> Counted:
    """SQLite VM steps per tick on each bed, in all and statement by statement."""
    small_twin, small_counter, small_log = _counting_twin(small)
    large_twin, large_counter, large_log = _counting_twin(large)
    small_steps = [small_counter.during(lambda: small.tick(small_twin)) for _ in range(COUNTED)]
    large_steps = [large_counter.during(lambda: large.tick(large_twin)) for _ in range(COUNTED)]
    for bed, twin, log in ((small, small_twin, small_log), (large, large_twin, large_log)):
        with log.recording():
            bed.tick(twin)
    costs = statement_costs(_url(small), _url(large), small_log.unique(), large_log.unique())
    return Counted(median(small_steps), median(large_steps), costs)


def _url(bed: Bed) -> str:
    return bed.deps.settings.database.url.get_secret_value()


def _counting_twin(bed: Bed) -> tuple[Deps, StepCounter, StatementLog]:
    # A second engine on the same file: the progress handler and the statement log
    # would slow the timed ticks, so only these twins carry them.
    loaded = load(bed.config)
    counter = StepCounter(loaded.engine)
    statements = StatementLog(loaded.engine)
    return loaded.deps, counter, statements


def figures(timings: Timings, counted: Counted) -> list[Figure]:
    tick, get = median(timings.small), median(timings.get)
    large = median(timings.large)
    overhead = tick - get
    return [
        Figure("in-process tick minus a bare requests.get (5 rules, 2 channels, nothing sent)",
               overhead * 1000, 5.0, "ms", TIMED,
               f"tick median {tick * 1000:.2f} ms, bare requests.get of the same fake endpoint "
               f"{get * 1000:.2f} ms; {WARMUP} warm-up ticks, then {TIMED} interleaved rounds; "
               f"`now` advances 1 minute a tick; SQLite file, {SMALL:,} stored readings."),
        Figure(f"tick with {LARGE:,} / with {SMALL:,} stored readings", large / tick, 1.25, "x",
               TIMED, f"tick medians {large * 1000:.2f} ms vs {tick * 1000:.2f} ms (over the bare "
               f"GET: {(large - get) * 1000:.2f} vs {overhead * 1000:.2f} ms); readings 1 minute "
               f"apart with a matching fetch_attempts row each, keep_raw={KEEP_RAW} so none is folded."),
        Figure(f"SQLite VM steps per tick, {LARGE:,} / {SMALL:,} readings",
               counted.large_steps / counted.small_steps, 1.25, "x", COUNTED,
               f"median {counted.large_steps:,.0f} vs {counted.small_steps:,.0f} steps a tick "
               f"(progress handler every 100 VM instructions, all connections); "
               f"{_growing(counted)} (per-statement steps and plans below)."),
    ]


def _growing(counted: Counted) -> str:
    grows = counted.growing
    if not grows:
        return f"none of the {len(counted.statements)} per-tick statements does more work on the large one"
    names = "; ".join(f"{one_line(c.statement, 90)} ({c.small_steps:,} -> {c.large_steps:,} steps)"
                      for c in grows)
    return f"{len(grows)} of {len(counted.statements)} per-tick statements grow with history: {names}"
