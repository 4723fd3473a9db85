"""Fault injection: one channel down for an hour, or hanging, while another stays healthy.

In-process, on the real tick: Deps wired by `worker.app.build` (the same wiring
`run` and `check` use), the fake API and two webhook receivers over loopback, and
`run_tick` called with `now` advancing one interval (1 minute) per tick, so an
hour is 60 ticks without sleeping.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import RunCli
from fakes import FakeOpenRouter, WebhookReceiver, write_settings
from sqlalchemy import select

from worker import db, store
from worker.app import build
from worker.redact import Redactor
from worker.settings import parse_settings
from worker.snapshot import TickReport
from worker.tables import OutboxRow
from worker.tick import Deps, run_tick

KEY = "sk-or-v1-faults-channels-0001"
ENV = {"OPENROUTER_API_KEY": KEY}
START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
INTERVAL = timedelta(minutes=1)
REF = re.compile(r"^ref: (\S+)$", re.MULTILINE)


@pytest.fixture
def healthy() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def _settings_text(tmp_path: Path, api: FakeOpenRouter, down: WebhookReceiver,
                   healthy: WebhookReceiver) -> str:
    return f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "5s"

        [schedule]
        interval = "1m"

        [database]
        url = "sqlite:///{tmp_path}/cw.db"

        [alerts]
        repeat_interval = "10m"

        [[channels]]
        name = "down"
        url = "{down.apprise_url()}"

        [[channels]]
        name = "healthy"
        url = "{healthy.apprise_url()}"

        [[rules]]
        name = "low"
        type = "threshold"
        below = 10.0
    """


@pytest.fixture
def deps(tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
         healthy: WebhookReceiver) -> Iterator[Deps]:
    text = _settings_text(tmp_path, fake_api, webhook, healthy)
    write_settings(tmp_path, text)  # for the `status` command
    settings = parse_settings(text.replace("\n        ", "\n"), ENV)
    engine = db.make_engine(settings.database.url.get_secret_value())
    db.upgrade(engine)
    yield build(settings, ENV, redact=Redactor([KEY]), engine=engine).deps
    engine.dispose()


def _usage(tick: int) -> float:
    """Low ($5 left) for 25 minutes, healthy for 10, low again: fire, repeat, resolve, fire."""
    return 95.0 if tick < 25 or tick >= 35 else 50.0


def _rows(deps: Deps, channel: str) -> list[OutboxRow]:
    with deps.sessions() as session:
        query = select(OutboxRow).where(OutboxRow.channel == channel).order_by(OutboxRow.id)
        return list(session.scalars(query))


def _refs(receiver: WebhookReceiver) -> list[str]:
    return [ref for m in receiver.messages for ref in REF.findall(str(m["message"]))]


def _tick(deps: Deps, api: FakeOpenRouter, tick: int) -> TickReport:
    api.set_balance(100.0, _usage(tick))
    return run_tick(deps, START + tick * INTERVAL)


@pytest.mark.slow
def test_a_channel_down_for_an_hour_gets_its_backlog_in_order_and_the_other_never_waits(
        deps: Deps, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        healthy: WebhookReceiver, run_cli: RunCli, tmp_path: Path) -> None:
    down = webhook
    down.set_failing(True)
    slowest = 0.0
    tried: list[int] = []
    for tick in range(60):
        report = _tick(deps, fake_api, tick)
        slowest = max(slowest, report.seconds)
        assert report.outcome.ok, report.outcome
        # The healthy channel has every message of this tick and before, once, in order.
        wanted = [r.key for r in _rows(deps, "healthy")]
        assert _refs(healthy) == wanted, (tick, _refs(healthy), wanted)
        assert all(r.status == "delivered" for r in _rows(deps, "healthy")), tick
        # The dead one keeps everything and tries its oldest message, backing off.
        waiting = _rows(deps, "down")
        assert all(r.status != "delivered" for r in waiting), tick
        assert report.failed in (0, 1), (tick, report)
        tried += [tick] * report.failed
    assert slowest < 5.0, f"a tick took {slowest:.2f}s while a channel was down"
    # After the k-th failed try the next is min(interval x 2^(k-1), 15m) later (CONTRACT):
    # 1, 2, 4, 8, 15, 15 minutes at a one-minute interval.
    assert tried == [0, 1, 3, 7, 15, 30, 45], tried
    assert down.count == len(tried)

    backlog = [r.key for r in _rows(deps, "down")]
    assert backlog == [
        "low#1/first", "low#1/repeat-1", "low#1/repeat-2", "low#1/resolved",
        "low#2/first", "low#2/repeat-1", "low#2/repeat-2",
    ], backlog
    assert _refs(down) == []
    status = run_cli("status", "--json", config=tmp_path / "settings.toml", env=ENV)
    assert status.code == 0, status
    assert json.loads(status.stdout)["undelivered_notifications"] == len(backlog), status.stdout

    # Back up: the next try (due at tick 60) delivers the whole backlog, in order, once each.
    down.set_failing(False)
    report = _tick(deps, fake_api, 60)
    assert report.failed == 0, report
    assert _refs(down) == backlog, _refs(down)
    _tick(deps, fake_api, 61)
    assert _refs(down) == backlog, "delivered twice"
    assert _refs(healthy) == [r.key for r in _rows(deps, "healthy")]
    assert Counter(_refs(healthy)) == Counter(backlog), "the channels got different messages"
    with deps.sessions() as session:
        assert store.undelivered_count(session) == 0
    print(f"\nchannel down for 60 ticks: backlog of {len(backlog)} delivered in order; "
          f"slowest tick {slowest:.2f}s")


@pytest.mark.slow
def test_a_hanging_channel_does_not_delay_the_others(
        deps: Deps, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        healthy: WebhookReceiver) -> None:
    _tick(deps, fake_api, 0)  # fires: both channels get it at once
    assert len(webhook.messages) == len(healthy.messages) == 1

    webhook.set_hang(30)
    done: list[TickReport] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: done.append(_tick(deps, fake_api, 25)), daemon=True)
    worker.start()  # tick 25 resolves the alert: one message per channel
    healthy.wait_for(2, timeout=5)
    arrived = time.monotonic() - started
    worker.join(40)
    took = time.monotonic() - started
    assert done, "the tick never finished"
    # Each channel's send runs in its own child process (about a second to start apprise);
    # the hanging one is abandoned only at send_timeout (10 s).
    assert arrived < 5.0, f"the healthy channel waited {arrived:.2f}s behind the hanging one"
    assert took >= 9.0, "the hanging send was cut before send_timeout"
    assert done[0].failed == 1 and done[0].delivered == 1, done[0]

    webhook.set_hang(0)
    _tick(deps, fake_api, 26)
    assert _refs(webhook) == ["low#1/first", "low#1/resolved"]
    assert _refs(healthy) == ["low#1/first", "low#1/resolved"]
    print(f"\nhanging channel: healthy message after {arrived:.2f}s, tick took {took:.2f}s")
