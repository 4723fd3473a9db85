"""End to end through the real `creditwatch check`: alert lifecycle, notify types, exit codes,
routing by channel and the outbox that retries a channel which refused a message."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
from conftest import Cli
from fakes import FakeOpenRouter, SmtpServer, WebhookReceiver, make_settings

KEY = "sk-or-v1-e2e-alerts-0001"


REPEAT = 8  # seconds; two checks must fit inside it even on a loaded 2-core machine

LOW_RULE = """
[[rules]]
name = "low-balance"
type = "threshold"
below = 10.0
"""


def _firing_title(message: dict[str, object], rule: str) -> None:
    title = str(message["title"])
    assert rule in title
    assert "resolved" not in title.lower()


# --------------------------------------------------------------------------- lifecycle


def test_threshold_fires_once_repeats_after_interval_and_resolves_once(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    fake_api.set_balance(100.0, 95.0)  # $5.00 left, below $10
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()},
                        rules=LOW_RULE, repeat=f"{REPEAT}s")

    started = time.monotonic()  # the first tick happens after this
    first = cli(cfg, "check")
    first_done = time.monotonic()  # ... and before this
    assert first.code == 1, first
    assert "Traceback" not in first.stderr
    [fired] = webhook.messages
    _firing_title(fired, "low-balance")
    assert "low-balance" in fired["message"]
    assert "$5.00" in fired["message"]
    assert fired["type"] == "warning"

    again = cli(cfg, "check")
    assert again.code == 1, again
    if time.monotonic() - started < REPEAT:  # both ticks provably inside repeat_interval
        assert len(webhook.messages) == 1, "a still-firing alert was repeated early"
    else:
        warnings.warn("machine too slow: the no-early-repeat step was not checked", stacklevel=1)

    time.sleep(max(0.0, REPEAT + 0.2 - (time.monotonic() - first_done)))
    reminder = cli(cfg, "check")
    assert reminder.code == 1, reminder
    assert len(webhook.messages) == 2, "no reminder after repeat_interval"
    repeat = webhook.messages[1]
    _firing_title(repeat, "low-balance")
    assert "low-balance" in repeat["message"] and "$5.00" in repeat["message"]
    assert repeat["type"] == "warning"

    fake_api.set_balance(200.0, 95.0)  # top-up: $105.00 left
    resolved = cli(cfg, "check")
    assert resolved.code == 0, resolved
    assert len(webhook.messages) == 3
    last = webhook.messages[2]
    assert "resolved" in str(last["title"]).lower()
    assert "low-balance" in str(last["title"])
    assert "low-balance" in last["message"]
    assert "$105.00" in last["message"]
    assert last["type"] == "success"

    quiet = cli(cfg, "check")
    assert quiet.code == 0, quiet
    assert len(webhook.messages) == 3, "the resolution was announced twice"


@pytest.mark.parametrize(("severity", "code", "notify_type"), [
    ("critical", 2, "failure"),
    ("warning", 1, "warning"),
    ("info", 0, "info"),
])
def test_check_exit_code_and_notify_type_follow_severity(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli,
        severity: str, code: int, notify_type: str) -> None:
    fake_api.set_balance(50.0, 48.0)
    rule = f'[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 10.0\nseverity = "{severity}"\n'
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()}, rules=rule)

    result = cli(cfg, "check")

    assert result.code == code, result
    [message] = webhook.messages
    _firing_title(message, "low")
    assert message["type"] == notify_type
    assert "$2.00" in message["message"]


def test_most_severe_firing_alert_wins(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    fake_api.set_balance(100.0, 99.0)  # $1.00 left: all three fire
    rules = ""
    for name, below, severity in (("a-info", 50, "info"), ("b-critical", 5, "critical"),
                                  ("c-warning", 20, "warning")):
        rules += (f'[[rules]]\nname = "{name}"\ntype = "threshold"\nbelow = {below}\n'
                  f'severity = "{severity}"\n\n')
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()}, rules=rules)

    result = cli(cfg, "check")

    assert result.code == 2, result
    by_type = sorted(m["type"] for m in webhook.messages)
    assert by_type == ["failure", "info", "warning"]


def test_pending_alert_inside_for_sends_nothing_and_keeps_exit_zero(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    fake_api.set_balance(100.0, 99.0)
    rule = ('[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 10.0\nseverity = "critical"\n'
            'for = "1h"\n')
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()}, rules=rule)
    result = cli(cfg, "check")
    assert result.code == 0, result
    assert webhook.requests == []


# --------------------------------------------------------------------------- routing


def test_rule_channels_route_messages(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        cli: Cli) -> None:
    # Two checks, so that no channel gets two messages from one process: apprise throttles
    # its email plugin for ~5.5 s between two sends through the same object.
    rules = """
    [[rules]]
    name = "mail-only"
    type = "threshold"
    below = 10.0
    channels = ["email"]

    [[rules]]
    name = "everyone"
    type = "threshold"
    below = 20.0
    severity = "critical"
    """
    cfg = make_settings(tmp_path, fake_api, rules=rules, channels={
        "hook": webhook.apprise_url(), "email": smtp.apprise_url()})

    fake_api.set_balance(100.0, 85.0)  # $15.00: only "everyone" fires
    first = cli(cfg, "check")
    assert first.code == 2, first
    [mail] = smtp.wait_for(1)
    assert "everyone" in mail.subject and "$15.00" in mail.body
    [hooked] = webhook.messages
    assert "everyone" in str(hooked["title"]) and "$15.00" in hooked["message"]

    fake_api.set_balance(100.0, 95.0)  # $5.00: "mail-only" fires too
    second = cli(cfg, "check")
    assert second.code == 2, second
    mails = smtp.wait_for(2)
    assert "mail-only" in mails[1].subject and "$5.00" in mails[1].body
    assert "resolved" not in mails[1].subject.lower()
    assert len(webhook.messages) == 1, "a rule routed to email alone reached the webhook"
    assert all("mail-only" not in str(r.body) for r in webhook.requests)
    assert len(smtp.messages) == 2


# --------------------------------------------------------------------------- outbox


def test_refused_message_is_delivered_on_a_later_tick_exactly_once(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        cli: Cli) -> None:
    fake_api.set_balance(100.0, 95.0)
    cfg = make_settings(tmp_path, fake_api, rules=LOW_RULE, channels={
        "hook": webhook.apprise_url(), "email": smtp.apprise_url()})
    webhook.fail_next(1)

    first = cli(cfg, "check")
    assert first.code == 1, first
    assert len(webhook.requests) == 1 and webhook.messages == []
    assert len(smtp.wait_for(1)) == 1, "a failing channel held up another channel"

    second = cli(cfg, "check")
    assert second.code == 1, second
    [message] = webhook.messages
    _firing_title(message, "low-balance")
    assert "$5.00" in message["message"]
    assert message["type"] == "warning"

    third = cli(cfg, "check")
    assert third.code == 1, third
    assert len(webhook.requests) == 2, "an accepted message was sent again"
    assert len(webhook.messages) == 1
    assert len(smtp.messages) == 1, "the mail, accepted at once, was sent again"


def test_refused_resolution_is_retried_and_not_lost(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    fake_api.set_balance(100.0, 95.0)
    cfg = make_settings(tmp_path, fake_api, rules=LOW_RULE,
                        channels={"hook": webhook.apprise_url()})
    assert cli(cfg, "check").code == 1
    fake_api.set_balance(200.0, 95.0)
    webhook.fail_next(1)
    assert cli(cfg, "check").code == 0
    assert len(webhook.messages) == 1
    assert cli(cfg, "check").code == 0
    assert [("resolved" in str(m["title"]).lower()) for m in webhook.messages] == [False, True]
    assert webhook.messages[1]["type"] == "success"
