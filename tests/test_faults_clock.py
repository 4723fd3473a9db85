"""Fault injection: the wall clock jumps between ticks.

The machine's real clock cannot be stepped here, so the tick tests run in
process: they build Deps exactly as `run` and `check` do (commands.load, which
builds with worker.app) and call run_tick with the `now` the shell would have
read, against the loopback fake API and a real webhook receiver. The
scheduler tests drive worker.service._Scheduler with a stepped wall clock.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import apscheduler.executors.base
import apscheduler.schedulers.base
import pytest
from apscheduler.executors.pool import ThreadPoolExecutor
from fakes import FakeOpenRouter, Resp, WebhookReceiver, write_settings
from sqlalchemy import text

import worker.service
from worker import commands, reports, store
from worker.app import App
from worker.sendpolicy import lease
from worker.snapshot import TickReport
from worker.tick import Deps, run_tick

KEY = "sk-or-v1-faults-clock-0004"
ENV = {"OPENROUTER_API_KEY": KEY}
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)
H = timedelta(hours=1)
LEASE = lease(timedelta(seconds=10))
# A sender on another host: its claim can only lapse, never be judged dead at once.
DEAD_SENDER = "another-host:4242:1"
RULES = ("low", "burn", "runway", "fetch")


# --------------------------------------------------------------------------- in-process ticks



def settings_file(tmp_path: Path, api: FakeOpenRouter, db_url: str, hook: str) -> Path:
    """Every rule type, each firing in the scenario below, all to one webhook."""
    return write_settings(tmp_path, textwrap.dedent(f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "2s"

        [schedule]
        interval = "5m"

        [database]
        url = "{db_url}"

        [alerts]
        repeat_interval = "1h"

        [forecast]
        window = "30m"

        [[channels]]
        name = "hook"
        url = "{hook}"

        [[rules]]
        name = "low"
        type = "threshold"
        below = 50.0

        [[rules]]
        name = "burn"
        type = "burn_rate"
        window = "30m"
        above = 10.0
        severity = "critical"

        [[rules]]
        name = "runway"
        type = "runway"
        window = "30m"
        below = "24h"
        severity = "info"

        [[rules]]
        name = "fetch"
        type = "fetch_failure"
        consecutive = 2
        severity = "critical"
    """))


def load_in_process(config: Path, environ: Mapping[str, str]) -> tuple[App, Deps]:
    """Settings, engine and Deps exactly as `check` and `run` build them, migrated."""
    args = argparse.Namespace(config=str(config), log_level="INFO")
    loaded = commands.load(args, environ, need_key=True)
    loaded.migrate()
    deps: Deps = loaded.deps
    return loaded, deps


@dataclass(frozen=True)
class Sent:
    """One message as the webhook received it, with the tick that sent it."""

    tick: int
    now: datetime
    rule: str
    period: int
    reason: str  # first | repeat-N | resolved

    @property
    def kind(self) -> str:
        return self.reason.split("-")[0]


def _sent(message: dict[str, object], tick: int, now: datetime) -> Sent:
    ref = str(message["message"]).splitlines()[-1]
    assert ref.startswith("ref: "), message
    rule, rest = ref.removeprefix("ref: ").split("#", 1)
    period, reason = rest.split("/", 1)
    return Sent(tick, now, rule, int(period), reason)


@dataclass
class Scenario:
    """Ticks at chosen wall-clock times; checks every report and status as it goes."""

    loaded: App
    deps: Deps
    api: FakeOpenRouter
    hook: WebhookReceiver
    credits: float = 100.0
    usage: float = 60.0
    spend_per_tick: float = 2.0  # $24/h at one tick every 5 minutes
    sent: list[Sent] = field(default_factory=list)
    reports: list[TickReport] = field(default_factory=list)

    def tick(self, now: datetime, *, fail: bool = False) -> TickReport:
        self.usage += self.spend_per_tick
        if fail:
            self.api.enqueue(Resp.html("<h1>captive portal</h1>"))  # bad_response, not retried
        else:
            self.api.set_balance(self.credits, self.usage)
        before = len(self.hook.messages)
        report = run_tick(self.deps, now)
        self.reports.append(report)
        self.sent += [_sent(m, len(self.reports), now) for m in self.hook.messages[before:]]
        _assert_sane_forecast(report.burn_per_hour, report.runway_hours, f"report at {now}")
        self._check_status(now)
        return report

    def ticks(self, start: datetime, count: int, **kwargs: bool) -> list[TickReport]:
        return [self.tick(start + i * STEP, **kwargs) for i in range(count)]

    def _check_status(self, now: datetime) -> None:
        view = self.loaded.snapshot(now)
        _assert_sane_forecast(view.figures.burn_per_hour, view.figures.runway_hours, f"status at {now}")
        doc = json.loads(reports.status_json([view]))
        _assert_sane_forecast(doc["burn_rate_per_hour"], doc["runway_hours"], f"status --json at {now}")
        shown = reports.status_text([view])
        forecast = [line for line in shown.splitlines() if line.startswith(("burn rate", "runway"))]
        assert len(forecast) == 2 and "-" not in " ".join(forecast), shown

    def since(self, tick: int) -> list[tuple[str, str]]:
        """(rule, kind) of every message sent from report number `tick` on (1-based)."""
        return sorted((s.rule, s.kind) for s in self.sent if s.tick >= tick)


def _assert_sane_forecast(burn: float | None, runway: float | None, where: str) -> None:
    for name, value in (("burn", burn), ("runway", runway)):
        if value is not None:
            assert math.isfinite(value) and value >= 0, f"{where}: {name} is {value}"


@pytest.fixture
def scenario(tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
             restore_logging: None) -> Iterator[Scenario]:
    config = settings_file(tmp_path, fake_api, f"sqlite:///{tmp_path}/cw.db", webhook.apprise_url())
    loaded, deps = load_in_process(config, ENV)
    yield Scenario(loaded, deps, fake_api, webhook)
    deps.http.close()
    loaded.engine.dispose()


def fire_everything(s: Scenario) -> datetime:
    """All four rules firing, one FIRST each; returns the time of the next regular tick."""
    s.ticks(T0, 3)  # $38 left and falling by $24/h: low, then burn and runway
    s.ticks(T0 + 3 * STEP, 2, fail=True)  # two unreadable bodies in a row: fetch
    assert s.since(1) == [(r, "first") for r in sorted(RULES)]
    assert sorted(name for name, _ in s.reports[-1].firing) == sorted(RULES)
    return T0 + 5 * STEP


def resolve_everything(s: Scenario, start: datetime, ticks: int) -> int:
    """Top up and stop spending; returns the 1-based index of the first resolving tick."""
    s.credits, s.spend_per_tick = 10_000.0, 0.0
    first = len(s.reports) + 1
    s.ticks(start, ticks)
    assert s.reports[-1].firing == [], s.reports[-1]
    assert s.reports[-1].exit_code == 0
    return first


def assert_resolved_once_and_quiet(s: Scenario, first_resolving_tick: int) -> None:
    """Each balance alert resolves exactly once and then stays quiet (no re-fire)."""
    for rule in ("low", "burn", "runway"):
        mine = [x for x in s.sent if x.rule == rule and x.tick >= first_resolving_tick]
        resolved = [x for x in mine if x.kind == "resolved"]
        assert len(resolved) == 1, (rule, mine)
        assert mine[-1] is resolved[0], f"{rule} sent {mine[-1]} after it resolved"
    keys = [(x.rule, x.reason) for x in s.sent]
    assert len(keys) == len(set(keys)), f"a message was sent twice: {keys}"
    with s.loaded.engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM outbox WHERE status != 'delivered'")).scalar()
    assert left == 0


def test_clock_stepped_back_an_hour_while_every_alert_fires(scenario: Scenario) -> None:
    s = scenario
    regular = fire_everything(s)

    # The clock is stepped back an hour, then ticks on every 5 minutes for 55 minutes.
    back = regular - H
    after_jump = len(s.reports) + 1
    s.ticks(back, 12)

    # The fetch alert resolves once, at the first readable tick; no reminder storm:
    # every reminder period restarted at the step, so nothing else is due yet.
    assert s.since(after_jump) == [("fetch", "resolved")]
    assert [x.tick for x in s.sent if x.kind == "resolved"] == [after_jump]

    # An hour of clock after the step, each still-firing alert reminds exactly once.
    reminder_tick = len(s.reports) + 1
    s.ticks(back + 12 * STEP, 2)
    assert s.since(reminder_tick) == [("burn", "repeat"), ("low", "repeat"), ("runway", "repeat")]

    first_resolving = resolve_everything(s, back + 14 * STEP, 14)
    assert_resolved_once_and_quiet(s, first_resolving)


def test_clock_jumps_forward_a_day_while_every_alert_fires(scenario: Scenario) -> None:
    s = scenario
    regular = fire_everything(s)

    ahead = regular + timedelta(days=1)
    after_jump = len(s.reports) + 1
    s.ticks(ahead, 12)

    # A day passed: one reminder each, not one per missed repeat_interval. The rate
    # rules need two readings inside their window first, so they remind one tick later.
    assert s.since(after_jump) == [("burn", "repeat"), ("fetch", "resolved"), ("low", "repeat"),
                                   ("runway", "repeat")]
    ticks = {(x.rule, x.kind): x.tick - after_jump for x in s.sent if x.tick >= after_jump}
    assert ticks == {("fetch", "resolved"): 0, ("low", "repeat"): 0,
                     ("burn", "repeat"): 1, ("runway", "repeat"): 1}

    first_resolving = resolve_everything(s, ahead + 12 * STEP, 10)
    assert_resolved_once_and_quiet(s, first_resolving)


def test_a_resolve_right_after_a_backward_step_is_sent_exactly_once(scenario: Scenario) -> None:
    s = scenario
    regular = fire_everything(s)

    # The very first ticks after the step back are the ones that resolve everything
    # (burn and runway need a second reading inside their window, one tick later).
    back = regular - H
    first_resolving = resolve_everything(s, back, 6)

    assert {(x.rule, x.kind) for x in s.sent if x.tick == first_resolving} == {
        ("low", "resolved"), ("fetch", "resolved")}
    assert {(x.rule, x.kind) for x in s.sent if x.tick == first_resolving + 1} == {
        ("burn", "resolved"), ("runway", "resolved")}
    assert_resolved_once_and_quiet(s, first_resolving)
    assert [x for x in s.sent if x.kind == "repeat"] == []


def test_a_backward_step_does_not_inflate_the_burn_rate(scenario: Scenario) -> None:
    """Readings stored before a backward step must not interleave by time with the new
    ones and count the same spend again (found by this test: a steady $6/h read as
    more than $10/h and burn_rate fired)."""
    s = scenario
    s.credits, s.spend_per_tick = 10_000.0, 0.5  # a steady $6/h, well under the $10/h rule
    s.ticks(T0, 8)
    assert s.sent == []
    assert s.reports[-1].burn_per_hour == pytest.approx(6.0)

    s.ticks(T0 + 8 * STEP - H, 12)  # stepped back an hour, still spending $6/h

    rates = [r.burn_per_hour for r in s.reports[8:]]
    assert all(rate is None or rate < 10.0 for rate in rates), rates
    assert s.sent == [], s.sent  # no false burn_rate alert


def test_a_resolved_burn_alert_stays_resolved_after_a_backward_step(scenario: Scenario) -> None:
    """Found by this test: a burn alert resolved after the step fired again with no
    spend at all once the older readings entered its window, then resolved again."""
    s = scenario
    regular = fire_everything(s)
    first_resolving = resolve_everything(s, regular - H, 6)  # all resolved, nothing spent since

    s.ticks(regular - H + 6 * STEP, 12)  # the next hour, still spending nothing

    assert_resolved_once_and_quiet(s, first_resolving)  # burn did not fire again
    assert [r.burn_per_hour for r in s.reports[first_resolving + 5:]] == [0.0] * 12


def crash_mid_send_then_step_back(s: Scenario) -> datetime:
    """All alerts resolve while the webhook refuses; a process then claims the first
    resolution for sending and is killed mid-send; it restarts with the clock an hour
    behind. Returns the time of the first tick after the restart."""
    regular = fire_everything(s)
    s.hook.set_failing(True)
    s.credits, s.spend_per_tick = 10_000.0, 0.0
    s.tick(regular)  # the resolutions are queued; the webhook refuses them for now
    s.hook.set_failing(False)
    with s.deps.sessions.begin() as session:
        head = store.head(session, "hook")
        assert head is not None
        assert store.claim(session, head, regular + STEP, LEASE, DEAD_SENDER) is not None
    return regular - H + 2 * STEP


def test_a_claim_left_by_a_crash_before_a_backward_step_is_not_lost(scenario: Scenario) -> None:
    s = scenario
    back = crash_mid_send_then_step_back(s)

    s.ticks(back, 15)  # past the point where the clock catches up with the dead claim

    resolved = sorted(x.rule for x in s.sent if x.kind == "resolved")
    assert resolved == sorted(RULES)  # each exactly once, and nothing fired again
    assert_resolved_once_and_quiet(s, len(s.reports) - 14)


def test_a_claim_left_by_a_crash_before_a_backward_step_is_not_held_for_an_hour(
        scenario: Scenario) -> None:
    """A claim dated in the future (the clock went back) counts as expired; found by
    this test: a lease of seconds held the message back for an hour."""
    s = scenario
    back = crash_mid_send_then_step_back(s)

    s.ticks(back, 3)  # 10 minutes after the restart, far longer than the lease

    resolved = sorted(x.rule for x in s.sent if x.kind == "resolved")
    assert resolved == sorted(RULES), f"still held by the dead claim: {resolved}"


# --------------------------------------------------------------------------- the scheduler


class WallClock:
    """A wall clock the test can step: time.time() and datetime.now() move together.

    The system clock of this machine cannot be stepped, so the test moves the
    wall clock as the process sees it. worker.service reads it through
    `time.time` (the module attribute, as the brief allows) and
    `datetime.now`; APScheduler reads it through `datetime.now` in its
    scheduler and executor modules. The monotonic clock is left alone, as a
    real clock step leaves it alone.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real_time = time.time
        clock = self

        class SteppedDatetime(datetime):
            @classmethod
            def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
                return datetime.now(tz) + timedelta(seconds=clock.offset)  # type: ignore[arg-type]

        monkeypatch.setattr(worker.service.time, "time", lambda: real_time() + clock.offset)
        for module in (worker.service, apscheduler.schedulers.base, apscheduler.executors.base):
            monkeypatch.setattr(module, "datetime", SteppedDatetime)

    def step(self, seconds: float) -> None:
        self.offset += seconds


class NoClockStepHandling(worker.service._Scheduler):
    """The same scheduler without the fix: APScheduler alone, trusting the wall clock."""

    def _follow_clock_step(self) -> None:
        pass


@dataclass
class Running:
    scheduler: worker.service._Scheduler
    thread: threading.Thread
    runs: list[float]  # time.monotonic() of every tick
    changed: threading.Condition

    def wait_runs(self, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.runs) >= n, timeout)

    def stop(self) -> None:
        self.scheduler.request_stop()
        self.thread.join(5)
        self.scheduler.shutdown(wait=False)
        assert not self.thread.is_alive()


def start_scheduler(kind: type[worker.service._Scheduler], interval: float) -> Running:
    """The scheduler as serve() configures it, ticking a recorder every `interval`."""
    changed = threading.Condition()
    runs: list[float] = []

    def tick() -> None:
        with changed:
            runs.append(time.monotonic())
            changed.notify_all()

    scheduler = kind(
        max_wait=max(1.0, interval),
        executors={"default": ThreadPoolExecutor(1)},
        job_defaults={"coalesce": True, "max_instances": 1,
                      "misfire_grace_time": max(1, int(interval / 2))},
        timezone=UTC,
    )
    scheduler.add_job(tick, "interval", seconds=interval, id=worker.service.JOB_ID,
                      next_run_time=worker.service.datetime.now(UTC))
    thread = threading.Thread(target=scheduler.start, daemon=True, name="cw-test-scheduler")
    thread.start()
    return Running(scheduler, thread, runs, changed)


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    return WallClock(monkeypatch)


@pytest.fixture
def running() -> Iterator[Callable[[type[worker.service._Scheduler]], Running]]:
    started: list[Running] = []

    def start(kind: type[worker.service._Scheduler]) -> Running:
        started.append(start_scheduler(kind, interval=1.0))
        return started[-1]

    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()


def test_without_the_fix_a_backward_step_delays_the_next_tick(
        wall_clock: WallClock, running: Callable[[type[worker.service._Scheduler]], Running]) -> None:
    r = running(NoClockStepHandling)
    assert r.wait_runs(1, timeout=5)

    wall_clock.step(-3600)
    stepped = len(r.runs)

    # APScheduler computes its next fire time on the wall clock: the tick that was
    # due within a second is now an hour away, and nothing runs meanwhile.
    assert not r.wait_runs(stepped + 1, timeout=2.5)
    job = r.scheduler.get_job(worker.service.JOB_ID)
    due_in = (job.next_run_time - worker.service.datetime.now(UTC)).total_seconds()
    assert due_in > 3500, due_in
    r.stop()


def test_with_the_fix_a_backward_step_reschedules_the_tick_at_once(
        wall_clock: WallClock, running: Callable[[type[worker.service._Scheduler]], Running],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="creditwatch.service")
    r = running(worker.service._Scheduler)
    assert r.wait_runs(1, timeout=5)

    wall_clock.step(-3600)
    stepped_at, stepped = time.monotonic(), len(r.runs)

    # The scheduler wakes at least once per interval, sees the wall clock moved
    # against the monotonic one, and runs the tick now; then ticks on as usual.
    assert r.wait_runs(stepped + 2, timeout=5), r.runs
    assert r.runs[stepped] - stepped_at < 3.0, r.runs[stepped] - stepped_at  # not 3600
    assert any("wall clock stepped by -3600s" in m for m in caplog.messages), caplog.messages
    r.stop()


def test_with_the_fix_a_forward_step_runs_the_tick_without_a_miss(
        wall_clock: WallClock, running: Callable[[type[worker.service._Scheduler]], Running],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="creditwatch.service")
    r = running(worker.service._Scheduler)
    assert r.wait_runs(1, timeout=5)

    wall_clock.step(86400)
    stepped_at, stepped = time.monotonic(), len(r.runs)

    assert r.wait_runs(stepped + 2, timeout=5), r.runs
    assert r.runs[stepped] - stepped_at < 3.0
    assert any("wall clock stepped by +86400s" in m for m in caplog.messages), caplog.messages
    r.stop()
