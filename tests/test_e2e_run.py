"""End to end through the real `creditwatch run`: it ticks at once and every interval, keeps
ticking past failures, and SIGTERM/SIGINT finish the tick in hand and exit 0."""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CliProcess, RunCli, StartCli
from fakes import FakeOpenRouter, Resp, WebhookReceiver, make_settings

KEY = "sk-or-v1-e2e-run-0004"
ENV = {"OPENROUTER_API_KEY": KEY}




def history(run_cli: RunCli, cfg: Path) -> list[dict[str, Any]]:
    result = run_cli("history", "--format", "json", config=cfg)
    assert result.code == 0, result
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


def stop(proc: CliProcess, sig: int = signal.SIGTERM) -> None:
    started = time.monotonic()
    result = proc.stop(sig, timeout=20)
    assert result.code == 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert time.monotonic() - started < 10, "the service took too long to stop"


LOW_RULE = '[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 10.0\n'


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_ticks_every_interval_until_a_signal(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli, run_cli: RunCli,
        sig: int) -> None:
    cfg = make_settings(tmp_path, fake_api)
    fake_api.set_balance(100.0, 10.0)
    proc = start_cli("run", config=cfg, env=ENV)

    seen = fake_api.wait_for_requests(3, timeout=15)

    gaps = [b.at - a.at for a, b in itertools.pairwise(seen)]
    assert all(0.5 < gap < 5 for gap in gaps[:2]), gaps  # every "1s", not back to back
    assert all(r.header("Authorization") == f"Bearer {KEY}" for r in seen)
    stop(proc, sig)
    after = fake_api.count
    time.sleep(1.3)
    assert fake_api.count == after, "a tick ran after the process exited"
    assert len(history(run_cli, cfg)) == after


def test_signal_during_a_tick_finishes_it_first(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli, run_cli: RunCli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()},
                        rules=LOW_RULE, timeout="5s")
    fake_api.set_default(Resp.credits(100.0, 95.0, delay=1.5))  # $5.00, answered slowly
    proc = start_cli("run", config=cfg, env=ENV)

    fake_api.wait_for_requests(1, timeout=15)  # the first tick is now waiting on the answer
    stop(proc, signal.SIGTERM)

    assert fake_api.count == 1
    [message] = webhook.messages  # stored, evaluated and delivered before exiting
    assert "low" in str(message["title"]) and "$5.00" in message["message"]
    [row] = history(run_cli, cfg)
    assert row["remaining"] == 5.0


def test_run_alerts_once_and_redelivers_a_refused_message_once(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()},
                        rules=LOW_RULE)
    fake_api.set_balance(100.0, 95.0)
    webhook.fail_next(1)
    proc = start_cli("run", config=cfg, env=ENV)

    [message] = webhook.wait_for(1, timeout=15)
    ticks = fake_api.count
    fake_api.wait_for_requests(ticks + 2, timeout=15)  # two more ticks after delivery
    stop(proc)

    assert "low" in str(message["title"]) and "$5.00" in message["message"]
    assert len(webhook.messages) == 1, "the alert was sent again while still firing"
    assert len(webhook.requests) == 2, "one refused attempt, one accepted, nothing more"


def test_a_hanging_api_does_not_stall_later_ticks(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli, run_cli: RunCli) -> None:
    cfg = make_settings(tmp_path, fake_api, timeout="1s")
    fake_api.set_default(Resp(hang=True))
    proc = start_cli("run", config=cfg, env=ENV)

    fake_api.wait_for_requests(3, timeout=20)
    stop(proc)

    status = run_cli("status", "--json", config=cfg)
    assert status.code == 0, status
    doc = json.loads(status.stdout)
    assert doc["last_fetch"]["ok"] is False and doc["last_fetch"]["error"]
