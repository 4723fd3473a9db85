"""creditwatch benchmarks (issue 5): one table of medians beside their targets.

    .venv/bin/python bench/run.py            # everything, ~8 minutes on 2 cores
    .venv/bin/python bench/run.py --only tick memory
    .venv/bin/python bench/run.py --profile  # cProfile of 200 in-process ticks instead

Progress goes to stderr; the report goes to stdout and to bench/.out/report.txt.
Every server binds 127.0.0.1 and every file lives in a temporary folder that is
removed at the end. The exit code is 1 when any figure misses its target.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import clibench
import hostilebench
import keysbench
import machine
import memorybench
import pagebench
import serverbench
import tickbench
import yearbench
from profiling import profile
from table import Figure, median, render_table
from testbed import servers

PARTS = ("tick", "keys", "memory", "server", "cli", "year", "page", "hostile", "imports")
OUT = Path(__file__).with_name(".out")


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    details: list[tuple[str, str]] = field(default_factory=list)  # (heading, text)
    tick_ms: float | None = None  # the in-process tick median, to pace the service child


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_tick_part(folder: Path, results: Results) -> None:
    with servers() as srv:
        progress(f"tick: seeding {tickbench.SMALL:,} and {tickbench.LARGE:,} readings")
        small = tickbench.make_bed(folder, srv, tickbench.SMALL)
        large = tickbench.make_bed(folder, srv, tickbench.LARGE)
        progress(f"tick: timing {tickbench.TIMED} rounds of bare GET / small tick / large tick")
        timings = tickbench.time_ticks(small, large, srv.api.credits_url)
        progress("tick: counting SQLite VM steps and explaining the per-tick statements")
        counted = tickbench.count_steps(small, large)
    results.figures += tickbench.figures(timings, counted)
    results.details.append(("Per-tick statements: SQLite VM steps (1k vs 1M readings) and "
                            "EXPLAIN QUERY PLAN", counted.report()))
    results.tick_ms = median(timings.small) * 1000


def run_keys_part(folder: Path, results: Results) -> None:
    progress(f"keys: {keysbench.TIMED} ticks of 2 accounts x {keysbench.KEYS:,} keys, "
             f"{keysbench.SMALL:,} and {keysbench.LARGE:,} key readings stored")
    results.figures += keysbench.figures(keysbench.measure(folder))


def run_memory_part(folder: Path, results: Results) -> None:
    # Pace the child a little slower than a tick takes, so few fire times are skipped;
    # a skipped one only costs a log line, but wastes up to an interval of wall time.
    interval_ms = max(5, math.ceil((results.tick_ms or 12.0) * 1.2))
    progress(f"memory: {memorybench.LAST:,} ticks of the service at a {interval_ms} ms interval")
    with servers() as srv:
        measured = memorybench.measure(folder, srv, interval_ms)
    results.figures += memorybench.figures(measured)


def run_server_part(folder: Path, results: Results) -> None:
    progress(f"server: {serverbench.TIMED} ticks with and without [server] listen, then "
             f"/metrics scrapes of `run` for {serverbench.SCRAPE_SECONDS:.0f} s")
    with servers() as srv:
        results.figures += serverbench.figures(serverbench.measure(folder, srv))


def run_cli_part(folder: Path, results: Results) -> None:
    progress(f"cli: {clibench.HELP_RUNS} x --help, {clibench.CHECK_RUNS} x check")
    results.figures.append(clibench.help_figure())
    with servers() as srv:
        results.figures.append(clibench.check_figure(folder, srv))


def run_year_part(folder: Path, results: Results) -> None:
    progress(f"year: {yearbench.DAYS} days of 1-minute ticks with daily retention")
    year = yearbench.simulate(folder)
    results.figures.append(yearbench.figure(year))
    results.details.append(("The simulated year's SQLite file by table and index (dbstat)",
                            yearbench.layout(year)))


def run_page_part(folder: Path, results: Results) -> None:
    progress(f"page: the status page of `run` over a year of history, {pagebench.CACHED_RUNS} views a span")
    with servers() as srv:
        results.figures += pagebench.figures(pagebench.measure(folder, srv))


def run_hostile_part(folder: Path, results: Results) -> None:
    progress(f"hostile: {hostilebench.STOP_RUNS} stops of `run` with a stuck channel")
    stops = hostilebench.stop_times(folder)
    progress(f"hostile: {hostilebench.TICKS} ticks of `run` against a trickling API and channel")
    threads = hostilebench.threads_over_ticks(folder)
    results.figures += hostilebench.figures(stops, threads)


def run_imports_part(_folder: Path, results: Results) -> None:
    progress("imports: python -X importtime, each module in a fresh interpreter")
    results.details.append((f"Import costs, for information (median of {clibench.IMPORT_RUNS})",
                            clibench.import_costs()))


RUNNERS: dict[str, Callable[[Path, Results], None]] = {
    "tick": run_tick_part, "keys": run_keys_part, "memory": run_memory_part, "server": run_server_part,
    "cli": run_cli_part,
    "year": run_year_part, "page": run_page_part, "hostile": run_hostile_part, "imports": run_imports_part,
}


def report(results: Results, seconds: float, load_at_start: str) -> str:
    load = f"load:    {load_at_start} at the start, {machine.load_average()} at the end (1-minute average)"
    parts = ["creditwatch benchmarks", *machine.describe(), load, "", render_table(results.figures)]
    for heading, text in results.details:
        parts += ["", heading, text]
    passed = sum(f.passed for f in results.figures)
    parts += ["", f"{passed} of {len(results.figures)} figures meet their targets; "
              f"total run time {seconds:.0f} s."]
    return "\n".join(parts)


def profile_ticks() -> str:
    """cProfile of TIMED ticks on the small database, fetch and delivery threads included."""
    with tempfile.TemporaryDirectory(prefix="cw-bench-") as tmp, servers() as srv:
        bed = tickbench.make_bed(Path(tmp), srv, tickbench.SMALL)
        for _ in range(tickbench.WARMUP):
            bed.tick()
        return profile(lambda: [bed.tick() for _ in range(tickbench.TIMED)])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--profile", action="store_true", help="profile the tick instead")
    args = parser.parse_args(argv)
    if args.profile:
        print(profile_ticks())
        return 0
    started, load_at_start = time.monotonic(), machine.load_average()
    results = Results()
    for part in PARTS:
        if part in args.only:
            with tempfile.TemporaryDirectory(prefix=f"cw-bench-{part}-") as tmp:
                RUNNERS[part](Path(tmp), results)
    text = report(results, time.monotonic() - started, load_at_start)
    print(text)
    OUT.mkdir(exist_ok=True)
    (OUT / "report.txt").write_text(text + "\n", encoding="utf-8")
    return 0 if all(f.passed for f in results.figures) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
