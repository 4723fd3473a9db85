"""Start-up as a user meets it: `creditwatch --help`, `creditwatch check`, and import costs."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from table import Figure, median
from testbed import BIN, Servers, environ, settings_text, write_settings

HELP_RUNS, CHECK_RUNS, IMPORT_RUNS = 20, 10, 5
IMPORTS = ("worker.cli", "worker.commands", "worker.tick", "apprise", "alembic", "sqlalchemy",
           "requests", "apscheduler")
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s?( *)(\S+)\s*$")


def _timed(argv: Sequence[str], cwd: Path | None = None) -> float:
    """Wall time of one run; a non-zero exit fails the benchmark, as the figure would lie."""
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=environ(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        msg = f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}"
        raise RuntimeError(msg)
    return elapsed


def help_figure() -> Figure:
    argv = [str(BIN / "creditwatch"), "--help"]
    _timed(argv)  # warm-up: the first run fills the page cache and writes .pyc files
    samples = [_timed(argv) for _ in range(HELP_RUNS)]
    return Figure("`creditwatch --help` wall time", median(samples) * 1000, 150.0, "ms", HELP_RUNS,
                  f"the console script in a subprocess; min {min(samples) * 1000:.0f} ms, "
                  f"max {max(samples) * 1000:.0f} ms; one warm-up run not counted.")


def check_figure(folder: Path, srv: Servers) -> Figure:
    config = write_settings(folder, settings_text(srv, folder / "check.db"), "check.toml")
    argv = [str(BIN / "creditwatch"), "--config", str(config), "--log-level", "WARNING", "check"]
    first = _timed(argv, folder)  # migrates the new database: a one-off, reported apart
    samples = [_timed(argv, folder) for _ in range(CHECK_RUNS)]
    return Figure("`creditwatch check` wall time against loopback", median(samples), 0.8, "s",
                  CHECK_RUNS, f"5 rules, 2 json:// channels, SQLite file, exit 0 each time; min "
                  f"{min(samples):.3f} s, max {max(samples):.3f} s; the first run, which creates "
                  f"the schema, took {first:.3f} s and is not counted.")


def import_costs() -> str:
    """Median cumulative import time of each module, each in a fresh interpreter."""
    floor = median(_timed([sys.executable, "-c", "pass"]) for _ in range(IMPORT_RUNS))
    lines = [f"  {'python -c pass (interpreter start, wall)':<42} {floor * 1000:8.1f} ms"]
    for module in IMPORTS:
        cost = median(_import_us(module) for _ in range(IMPORT_RUNS)) / 1000
        lines.append(f"  {'import ' + module + ' (cumulative)':<42} {cost:8.1f} ms")
    return "\n".join(lines)


def _import_us(module: str) -> float:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          env=environ(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, check=True)
    for line in done.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        # The top-level line (no indent) of the module itself carries its cumulative cost.
        if match and match.group(4) == module and not match.group(3):
            return float(match.group(2))
    msg = f"-X importtime printed no line for {module}"
    raise RuntimeError(msg)
