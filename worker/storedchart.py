"""The chart of an account's stored history, drawn by a child process that reads the database
itself: the long-lived service holds neither matplotlib (~56 MB) nor a month of readings
(30 days at one a minute are 43,200 of them, ~15 MB of Python objects on the way to the
chart) in its memory; it gets back the SVG and how many points it holds.

    CREDITWATCH_CHART_DB_URL=... python -m worker.storedchart ACCOUNT SPAN_SECONDS END TIMEOUT

prints one line of JSON (`{"points", "start", "end"}`), then the SVG; on failure it exits
non-zero and the last line of its stderr says why. The URL comes in the environment (not
argv, which `ps` shows to every user); the child gets nothing else of the service's secrets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from worker import db, store
from worker.chart import ChartData, build_chart
from worker.chartrender import CHILD_TIMEOUT, render
from worker.errors import RuntimeProblem
from worker.text import escape_controls

URL_VARIABLE = "CREDITWATCH_CHART_DB_URL"
_CHILD_ENV = ("PATH", "PYTHONPATH", "HOME", "TMPDIR", "MPLCONFIGDIR", "LANG", "LC_ALL")


@dataclass(frozen=True, slots=True)
class Drawn:
    """A chart as SVG, with what it shows: `points` balance points over [start, end]."""

    svg: bytes
    points: int
    start: datetime
    end: datetime


def chart_of(url: str, timeout: float, account: str, span: timedelta, end: datetime) -> ChartData:
    """The chart of the account's history in [end - span, end], rollups past the raw data included."""
    engine = db.make_engine(url, timeout, create=False)
    try:
        with store.sessions(engine)() as session:
            readings = store.history_between(session, account, end - span, end)
    finally:
        engine.dispose()
    return build_chart(readings, end, span)


def draw(url: str, timeout: float, account: str, span: timedelta, end: datetime) -> Drawn:
    """The chart drawn in this process (what the child does)."""
    data = chart_of(url, timeout, account, span, end)
    return Drawn(render(data, "svg"), len(data.points), data.start, data.end)


def draw_in_child(url: str, timeout: float, account: str, span: timedelta, end: datetime,
                  child_timeout: float = CHILD_TIMEOUT) -> Drawn:
    """`draw` in a short-lived child process, killed after `child_timeout` seconds; RuntimeProblem
    (one line, no secret) when it fails or runs out of time."""
    env = {name: os.environ[name] for name in _CHILD_ENV if name in os.environ} | {URL_VARIABLE: url}
    command = [sys.executable, "-m", "worker.storedchart", account, f"{span.total_seconds():g}",
               end.isoformat(), f"{timeout:g}"]
    try:
        done = subprocess.run(command, capture_output=True, env=env, timeout=child_timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        msg = f"chart: drawing took longer than {child_timeout:g}s"
        raise RuntimeProblem(msg) from None
    head, _, svg = done.stdout.partition(b"\n")
    if done.returncode != 0 or not svg:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit {done.returncode}"]
        msg = f"chart: drawing failed: {escape_controls(lines[-1])}"
        raise RuntimeProblem(msg)
    meta = json.loads(head)
    return Drawn(svg, int(meta["points"]), datetime.fromisoformat(meta["start"]),
                 datetime.fromisoformat(meta["end"]))


def main(argv: Sequence[str] | None = None) -> int:
    """The child: the chart of ACCOUNT over SPAN_SECONDS up to END, as a JSON line and an SVG."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4 or URL_VARIABLE not in os.environ:
        print(f"usage: {URL_VARIABLE}=URL python -m worker.storedchart ACCOUNT SPAN_SECONDS END TIMEOUT",
              file=sys.stderr)
        return 64
    try:
        span, end = timedelta(seconds=float(args[1])), datetime.fromisoformat(args[2])
        drawn = draw(os.environ[URL_VARIABLE], float(args[3]), args[0], span, end)
    except SQLAlchemyError as err:
        print(f"database: {db.first_line(err)}", file=sys.stderr)  # first_line never holds the URL
        return 1
    except ValueError as err:
        print(f"bad chart request: {err}", file=sys.stderr)
        return 1
    meta = {"points": drawn.points, "start": drawn.start.isoformat(), "end": drawn.end.isoformat()}
    sys.stdout.buffer.write(json.dumps(meta).encode() + b"\n" + drawn.svg)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
