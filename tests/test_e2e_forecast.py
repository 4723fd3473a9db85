"""Forecasting end to end: `for`, `clear_above` and `short_window` through `creditwatch check`.

Each test runs a plain rule beside the guarded one, so it shows the flapping or
stale page that the guard prevents, not only that the guard is quiet.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import RunCli
from fakes import FakeOpenRouter, WebhookReceiver, write_settings

KEY = {"OPENROUTER_API_KEY": "sk-or-v1-forecast-test"}


def _settings(tmp_path: Path, api: FakeOpenRouter, hook: WebhookReceiver, rules: str,
              forecast: str = "6h") -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "2s"
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        [alerts]
        repeat_interval = "1h"
        [forecast]
        window = "{forecast}"
        [[channels]]
        name = "hook"
        url = "{hook.apprise_url()}"
        {rules}
    """)


def _check(run_cli: RunCli, config: Path) -> int:
    result = run_cli("check", config=config, env=KEY)
    assert "Traceback" not in result.stderr, result.stderr
    return result.code


def _events(hook: WebhookReceiver) -> Counter[tuple[str, str]]:
    """(rule, firing|resolved) counted over every message received."""
    out: Counter[tuple[str, str]] = Counter()
    for m in hook.messages:
        ref = str(m["message"]).splitlines()[-1].removeprefix("ref: ")
        rule = ref.split("#", 1)[0]
        out[(rule, "resolved" if "resolved" in m["title"].lower() else "firing")] += 1
    return out


def test_for_keeps_a_brief_dip_from_paging(tmp_path: Path, run_cli: RunCli,
                                           fake_api: FakeOpenRouter, webhook: WebhookReceiver) -> None:
    config = _settings(tmp_path, fake_api, webhook, """
        [[rules]]
        name = "instant"
        type = "threshold"
        below = 10.0
        [[rules]]
        name = "patient"
        type = "threshold"
        below = 10.0
        for = "3s"
    """)
    fake_api.set_balance(100, 95)  # a dip to $5...
    assert _check(run_cli, config) == 1  # instant fires; patient is only pending
    fake_api.set_balance(100, 50)  # ...that is over at the next tick
    assert _check(run_cli, config) == 0
    assert _events(webhook) == {("instant", "firing"): 1, ("instant", "resolved"): 1}

    fake_api.set_balance(100, 95)  # a lasting drop pages once `for` has passed
    assert _check(run_cli, config) == 1
    assert _events(webhook)[("patient", "firing")] == 0
    time.sleep(3.2)
    assert _check(run_cli, config) == 1
    assert _events(webhook)[("patient", "firing")] == 1


def test_clear_above_stops_flapping_around_the_line(tmp_path: Path, run_cli: RunCli,
                                                    fake_api: FakeOpenRouter,
                                                    webhook: WebhookReceiver) -> None:
    config = _settings(tmp_path, fake_api, webhook, """
        [[rules]]
        name = "plain"
        type = "threshold"
        below = 10.0
        [[rules]]
        name = "sticky"
        type = "threshold"
        below = 10.0
        clear_above = 15.0
    """)
    for remaining in (9, 11, 9, 11):  # hovering around $10
        fake_api.set_balance(100, 100 - remaining)
        _check(run_cli, config)
    events = _events(webhook)
    assert events[("plain", "firing")] == 2 and events[("plain", "resolved")] == 2
    assert events[("sticky", "firing")] == 1 and events[("sticky", "resolved")] == 0

    fake_api.set_balance(100, 84)  # $16: above clear_above at last
    _check(run_cli, config)
    assert _events(webhook)[("sticky", "resolved")] == 1


def test_short_window_resolves_soon_after_the_burn_stops(tmp_path: Path, run_cli: RunCli,
                                                         fake_api: FakeOpenRouter,
                                                         webhook: WebhookReceiver) -> None:
    config = _settings(tmp_path, fake_api, webhook, """
        [[rules]]
        name = "long-only"
        type = "burn_rate"
        window = "1m"
        above = 100.0
        [[rules]]
        name = "multi"
        type = "burn_rate"
        window = "1m"
        short_window = "10s"
        above = 100.0
    """)
    # A burst: $10 a check, thousands of dollars an hour. Checks take a second or more on a
    # loaded machine, so the burst goes on until two of its readings fall in the short window.
    usage = 0.0
    for _ in range(6):
        fake_api.set_balance(1000, usage)
        _check(run_cli, config)
        usage += 10
        if _events(webhook)[("multi", "firing")]:
            break
    assert _events(webhook)[("multi", "firing")] == 1
    assert _events(webhook)[("long-only", "firing")] == 1
    burst_ended = time.monotonic()

    # The burn stops: once the short window holds no spend, "multi" resolves; the 1 m window
    # still holds the burst, so "long-only" keeps paging about a spike that is over.
    while not _events(webhook)[("multi", "resolved")] and time.monotonic() < burst_ended + 40:
        _check(run_cli, config)
    events = _events(webhook)
    assert events[("multi", "resolved")] == 1
    assert events[("long-only", "resolved")] == 0


def test_status_and_messages_carry_burn_and_runway(tmp_path: Path, run_cli: RunCli,
                                                   fake_api: FakeOpenRouter,
                                                   webhook: WebhookReceiver) -> None:
    config = _settings(tmp_path, fake_api, webhook, """
        [[rules]]
        name = "short-runway"
        type = "runway"
        window = "1m"
        below = "24h"
    """, forecast="1m")
    fake_api.set_balance(100, 10)
    _check(run_cli, config)
    time.sleep(1.0)
    fake_api.set_balance(100, 14)  # $4 in a few seconds: thousands per hour
    assert _check(run_cli, config) == 1

    status: dict[str, Any] = json.loads(run_cli("status", "--json", config=config).stdout)
    assert status["burn_rate_per_hour"] > 1000
    assert 0 < status["runway_hours"] < 1
    assert abs(status["runway_hours"] - 86 / status["burn_rate_per_hour"]) < 1e-6
    [message] = webhook.messages
    assert "short-runway" in message["title"]
    assert "Burning $" in message["message"] and "left" in message["message"]
    text = run_cli("status", config=config).stdout
    assert "burn rate" in text and "runway" in text and "short-runway" in text


def test_a_top_up_is_not_burn(tmp_path: Path, run_cli: RunCli, fake_api: FakeOpenRouter,
                              webhook: WebhookReceiver) -> None:
    config = _settings(tmp_path, fake_api, webhook, """
        [[rules]]
        name = "fast-burn"
        type = "burn_rate"
        window = "1m"
        above = 1.0
    """, forecast="1m")
    for credits in (100, 500, 1000):  # top-ups only; usage never moves
        fake_api.set_balance(credits, 20)
        assert _check(run_cli, config) == 0
    status = json.loads(run_cli("status", "--json", config=config).stdout)
    assert status["burn_rate_per_hour"] == 0.0
    assert status["runway_hours"] is None
    assert webhook.messages == []
