"""`run`: APScheduler ticks at once and then every interval, until SIGTERM or SIGINT.

Under systemd (`Type=notify`, $NOTIFY_SOCKET set) it says READY=1 when the first tick
has ended, WATCHDOG=1 after every tick, and STOPPING=1 as soon as a stop is requested
(see worker.sdnotify). When the unit sets WatchdogSec, it also says WATCHDOG=1 when a tick
starts and every half period while no tick runs, so the watchdog needs to cover one tick
(its worst case), not the interval: a tick that hangs past it is what trips it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from threading import TIMEOUT_MAX
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.schedulers.blocking import BlockingScheduler

from worker.sdnotify import Notifier

log = logging.getLogger("creditwatch.service")
JOB_ID = "tick"
CLOCK_STEP = 5.0  # seconds the wall clock may drift from the monotonic clock before we react


class _Scheduler(BlockingScheduler):  # type: ignore[misc]  # APScheduler 3 is untyped
    """BlockingScheduler that stops on request and survives wall-clock steps.

    APScheduler trusts the wall clock: after a step backwards it would sleep past
    fire times. We cap every wait at the interval and, when the wall clock moves
    against the monotonic one, reschedule the tick for now.
    """

    def __init__(self, max_wait: float, on_wake: Callable[[], None] = lambda: None,
                 **options: Any) -> None:
        super().__init__(**options)
        self._max_wait = max_wait
        self._on_wake = on_wake  # runs each time the loop wakes, at least every max_wait
        self._stop = threading.Event()
        self._offset = _clock_offset()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self.state == STATE_STOPPED

    def request_stop(self) -> None:
        self._stop.set()
        self.wakeup()

    def _main_loop(self) -> None:
        wait_seconds: float = TIMEOUT_MAX
        while self.state != STATE_STOPPED and not self._stop.is_set():
            self._event.wait(min(wait_seconds, self._max_wait))
            self._event.clear()
            if self._stop.is_set():
                break
            self._on_wake()
            self._follow_clock_step()
            wait_seconds = self._process_jobs()

    def _follow_clock_step(self) -> None:
        offset = _clock_offset()
        if abs(offset - self._offset) > CLOCK_STEP:
            log.warning("the wall clock stepped by %+.0fs; rescheduling the tick for now",
                        offset - self._offset)
            job = self.get_job(JOB_ID)
            if job is not None:
                job.modify(next_run_time=datetime.now(UTC))
        self._offset = offset


def _clock_offset() -> float:
    return time.time() - time.monotonic()


class _Notices:
    """What serve tells systemd, in the protocol's order: READY=1 once, after the first
    tick; WATCHDOG=1 after each tick; STOPPING=1 once; nothing after STOPPING=1."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._lock = threading.Lock()  # ticks end in the executor's thread, the rest in main
        self._ready = False
        self._stopping = False

    @property
    def watchdog_seconds(self) -> float | None:
        return self._notifier.watchdog_seconds

    def starting(self, budget: float) -> None:
        # The manager waits this long for READY=1, whatever TimeoutStartSec says.
        self._notifier.notify(f"EXTEND_TIMEOUT_USEC={int(budget * 1e6)}", "STATUS=running the first tick")

    def tick_ended(self, status: object) -> None:
        text = status if isinstance(status, str) else None
        with self._lock:
            if self._stopping:
                return
            first, self._ready = not self._ready, True
            self._notifier.notify(*(["READY=1"] if first else []), "WATCHDOG=1",
                                  *([f"STATUS={' '.join(text.split())}"] if text else []))

    def alive(self) -> None:
        """A watchdog keep-alive between ticks or as one starts (only with WatchdogSec set)."""
        with self._lock:
            if self.watchdog_seconds is not None and self._ready and not self._stopping:
                self._notifier.notify("WATCHDOG=1")

    def stopping(self, budget: float) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            # The manager waits this long for the exit, whatever TimeoutStopSec says.
            self._notifier.notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int(budget * 1e6)}",
                                  "STATUS=stopping: finishing the tick in hand")


def serve(tick: Callable[[], object], interval: timedelta, stop_budget: float,
          on_stop: Callable[[], None] = lambda: None, notifier: Notifier | None = None) -> int:
    """Tick now and every `interval` until a signal; finish the tick in hand; return 0.

    `stop_budget` is the longest a tick may take. `on_stop` runs in the signal handler: it
    tells the tick in hand to start nothing new (delivery then waits only for the sends in
    flight, each bounded by send_timeout). A string that `tick` returns becomes the STATUS=
    line systemd shows. `notifier` defaults to the one $NOTIFY_SOCKET asks for.
    """
    notices = _Notices(notifier or Notifier.from_environ(os.environ))
    busy = threading.Lock()
    seconds = interval.total_seconds()

    def job() -> None:
        status: object = None
        started = time.monotonic()
        try:
            with busy:
                notices.alive()
                status = tick()
        finally:  # a tick that raised still ended: the process is alive and ticking
            notices.tick_ended(status)
        overran = time.monotonic() - started >= seconds
        if overran and not scheduler.stopping:
            # The fire time that passed during this tick was skipped (max_instances=1):
            # start the next tick now instead of a whole interval later. The job is gone
            # if a signal stopped the scheduler meanwhile.
            with contextlib.suppress(JobLookupError):
                scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    def idle() -> None:
        # No keep-alive while a tick runs: a hung tick must starve the watchdog.
        if not busy.locked():
            notices.alive()

    scheduler = _Scheduler(
        max_wait=_max_wait(seconds, notices, stop_budget),
        on_wake=idle,
        executors={"default": ThreadPoolExecutor(1)},
        # misfire_grace_time defaults to 1 s, silently skipping a tick that starts late.
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": max(1, int(seconds / 2))},
        timezone=UTC,
    )
    scheduler.add_job(job, "interval", seconds=seconds, id=JOB_ID, next_run_time=datetime.now(UTC))
    def stop() -> None:
        on_stop()
        scheduler.request_stop()

    _on_signals(stop)
    log.info("creditwatch running: a tick every %ss", f"{seconds:g}")
    notices.starting(stop_budget + 5)
    scheduler.start()
    # Said here, in the main thread, and not in the signal handler: the handler could
    # interrupt this thread while it holds the notices' lock.
    notices.stopping(stop_budget + 5)
    scheduler.shutdown(wait=False)
    # shutdown(wait=True) has no timeout: wait for the tick in hand ourselves, bounded.
    if busy.acquire(timeout=stop_budget):
        busy.release()
        log.info("creditwatch stopped")
    else:
        log.error("the tick in hand did not finish within %.0fs; exiting anyway", stop_budget)
    return 0


def _max_wait(seconds: float, notices: _Notices, tick_bound: float) -> float:
    """How long the scheduler may sleep: the interval, or half the watchdog period."""
    wait = max(1.0, seconds)
    period = notices.watchdog_seconds
    if period is None:
        return wait
    if period < tick_bound:
        log.warning("WatchdogSec=%gs is shorter than the longest a tick may take (%.0fs): systemd may "
                    "kill a slow but healthy tick; raise WatchdogSec in the unit", period, tick_bound)
    return min(wait, max(0.1, period / 2))


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the tick in hand", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
