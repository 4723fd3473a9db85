"""`creditwatch run` with a sub-second interval, writing its resident memory at tick marks.

memorybench.py starts this as a process of its own, so the figure is this
process's memory alone (the fake servers live in the parent). It imports what
`run` imports and nothing of the bench or the tests: an extra import here would
count against creditwatch.

Usage: servechild.py SETTINGS OUT_JSON INTERVAL_MS LAST_TICK
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from procfs import status_kb, tree_rss_kb
from worker import commands, db, procs
from worker.reports import summary_line
from worker.service import serve

log = logging.getLogger("creditwatch")
EVERY = 1_000  # ticks between two memory samples


class VirtualClock:
    """`now` for each tick: one schedule.interval after the last, however fast the ticks come.

    With the wall clock, 10,000 ticks a few milliseconds apart would all fall
    inside every rule's window and each tick would load all of them; stepping
    by the configured interval keeps the history the size a real run has.
    """

    def __init__(self, start: datetime, step: timedelta) -> None:
        self._next, self._step = start, step

    def next(self) -> datetime:
        now, self._next = self._next, self._next + self._step
        return now


class Probe:
    """Counts ticks, samples VmRSS every EVERY ticks, and writes them all out at `last`."""

    def __init__(self, out: Path, last: int) -> None:
        self._out, self._last = out, last
        self._ticks = 0
        self._rss_kb: dict[int, int] = {}
        self._started = time.monotonic()

    def after_tick(self) -> None:
        self._ticks += 1
        if self._ticks % EVERY == 0 or self._ticks == self._last:
            self._rss_kb[self._ticks] = tree_rss_kb(os.getpid())
        if self._ticks == self._last:
            self._write()

    def _write(self) -> None:
        result = {"rss_kb": self._rss_kb, "hwm_kb": status_kb("VmHWM"),
                  "seconds": time.monotonic() - self._started}
        partial = self._out.with_suffix(".partial")
        partial.write_text(json.dumps(result), encoding="utf-8")
        partial.replace(self._out)  # atomic: the parent never reads half a file


def main(argv: list[str]) -> int:
    config, out, interval_ms, last = argv
    # From here on this is commands.cmd_run, but for the interval, the clock and the probe.
    procs.limit_malloc_arenas()
    app = commands.load(argparse.Namespace(config=config, log_level="INFO"), os.environ, need_key=True,
                        inspect_in_child=True)
    app.migrate_in_child()
    clock = VirtualClock(db.now_utc(), app.settings.schedule.interval)
    probe = Probe(Path(out), int(last))

    def tick() -> None:
        try:
            log.info(summary_line(app.tick(clock.next())))
        except SQLAlchemyError as err:
            log.error("tick failed, will retry at the next one: %s", app.database_problem(err))
        except Exception as err:  # noqa: BLE001 - as in cmd_run: the service outlives a tick's bug
            log.error("tick failed, will retry at the next one: %s", app.redact(repr(err)))
        procs.trim_malloc()  # as Runner.tick does
        probe.after_tick()

    interval = timedelta(milliseconds=float(interval_ms))
    return serve(tick, interval, app.worst_tick_seconds, app.deps.outbox.request_stop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
