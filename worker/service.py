"""`run`: APScheduler ticks at once and then every interval, until SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import logging
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

log = logging.getLogger("creditwatch.service")
JOB_ID = "tick"
CLOCK_STEP = 5.0  # seconds the wall clock may drift from the monotonic clock before we react


class _Scheduler(BlockingScheduler):  # type: ignore[misc]  # APScheduler 3 is untyped
    """BlockingScheduler that stops on request and survives wall-clock steps.

    APScheduler trusts the wall clock: after a step backwards it would sleep past
    fire times. We cap every wait at the interval and, when the wall clock moves
    against the monotonic one, reschedule the tick for now.
    """

    def __init__(self, max_wait: float, **options: Any) -> None:
        super().__init__(**options)
        self._max_wait = max_wait
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


def serve(tick: Callable[[], None], interval: timedelta, stop_budget: float,
          on_stop: Callable[[], None] = lambda: None) -> int:
    """Tick now and every `interval` until a signal; finish the tick in hand; return 0.

    `on_stop` runs in the signal handler: it tells the tick in hand to start nothing new
    (delivery then waits only for the sends in flight, each bounded by send_timeout).
    """
    busy = threading.Lock()
    seconds = interval.total_seconds()

    def job() -> None:
        with busy:
            started = time.monotonic()
            tick()
            overran = time.monotonic() - started >= seconds
        if overran and not scheduler.stopping:
            # The fire time that passed during this tick was skipped (max_instances=1):
            # start the next tick now instead of a whole interval later. The job is gone
            # if a signal stopped the scheduler meanwhile.
            with contextlib.suppress(JobLookupError):
                scheduler.modify_job(JOB_ID, next_run_time=datetime.now(UTC))

    scheduler = _Scheduler(
        max_wait=max(1.0, seconds),
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
    scheduler.start()
    scheduler.shutdown(wait=False)
    # shutdown(wait=True) has no timeout: wait for the tick in hand ourselves, bounded.
    if busy.acquire(timeout=stop_budget):
        busy.release()
        log.info("creditwatch stopped")
    else:
        log.error("the tick in hand did not finish within %.0fs; exiting anyway", stop_budget)
    return 0


def _on_signals(stop: Callable[[], None]) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the tick in hand", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
