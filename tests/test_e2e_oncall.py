"""On-call craft through the real CLI and real receivers (a webhook, an SMTP server): what a
message says, silences, inhibition, grouping, and the digest (once per period, with its chart)."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli
from fakes import FakeOpenRouter, SmtpServer, WebhookReceiver, write_settings

from worker.app import build
from worker.settings import parse_settings

KEY = "sk-or-v1-oncall-0012"
ENV = {"OPENROUTER_API_KEY": KEY}
REF = re.compile(r"^ref: (\S+)$", re.MULTILINE)


def settings(tmp_path: Path, api: FakeOpenRouter, channels: dict[str, str], rules: str,
             alerts: str = "", extra: str = "") -> Path:
    chans = "".join(f'\n[[channels]]\nname = "{n}"\nurl = "{u}"\n' for n, u in channels.items())
    return write_settings(tmp_path, (
        f'[openrouter]\nbase_url = "{api.base_url}"\ntimeout = "2s"\n\n'
        f'[database]\nurl = "sqlite:///{tmp_path}/cw.db"\n\n'
        f"[alerts]\n{alerts}\n\n{extra}\n{chans}\n{rules}"))


def refs(hook: WebhookReceiver) -> list[str]:
    return [ref for m in hook.messages for ref in REF.findall(str(m["message"]))]


LOW = """
[[rules]]
name = "low-balance"
type = "threshold"
below = 10.0
clear_above = 15.0
severity = "critical"
"""


def test_titles_and_bodies_read_at_a_glance_in_json_and_plain_text_email(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        run_cli: RunCli) -> None:
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url(), "mail": smtp.apprise_url()}, LOW,
                   alerts='timezone = "Europe/Paris"')
    fake_api.set_balance(100.0, 95.88)
    assert run_cli("check", config=cfg, env=ENV).code == 2
    [fired] = webhook.messages
    assert fired["title"] == "[CRITICAL] low-balance, $4.12 left"
    assert fired["type"] == "failure"
    lines = fired["message"].splitlines()
    assert lines[0] == "low-balance is firing: remaining $4.12 is below $10.00."
    assert lines[1].startswith("Balance: $4.12 remaining of $100.00 (used $95.88), read ")
    assert re.search(r"read \d{4}-\d\d-\d\d \d\d:\d\d CES?T \(just now\)\.$", lines[1]), lines[1]
    assert "Top up: https://openrouter.ai/settings/credits" in lines
    assert lines[-1] == "ref: low-balance#1/first"
    [mail] = smtp.wait_for(1)
    assert mail.subject == fired["title"]
    assert mail.body.splitlines() == lines  # the plain-text part: one fact a line

    # The resolve states the line it crossed: clear_above (15), not below (10).
    fake_api.set_balance(100.0, 84.0)
    assert run_cli("check", config=cfg, env=ENV).code == 0
    resolved = webhook.messages[-1]
    assert resolved["title"] == "[RESOLVED] low-balance resolved, $16.00 left"
    assert resolved["type"] == "success"
    assert resolved["message"].splitlines()[0] == ("low-balance is resolved: remaining $16.00 is above "
                                                   "$15.00.")
    assert "Top up" not in resolved["message"]


def test_a_burn_rate_from_too_little_of_its_window_says_so(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, run_cli: RunCli) -> None:
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url()}, LOW, extra='[forecast]\nwindow = "6h"')
    fake_api.set_balance(100.0, 94.0)
    run_cli("check", config=cfg, env=ENV)
    fake_api.set_balance(100.0, 95.0)
    run_cli("check", config=cfg, env=ENV)  # two readings seconds apart: a rough burn rate
    status = json.loads(run_cli("status", "--json", config=cfg).stdout)
    assert status["burn_rate_per_hour"] is not None
    [message] = webhook.messages  # fired at the first check
    fake_api.set_balance(100.0, 96.0)
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url()}, LOW,
                   alerts='repeat_interval = "1s"', extra='[forecast]\nwindow = "6h"')
    run_cli("check", config=cfg, env=ENV)
    reminder = webhook.messages[-1]["message"]
    assert "(still firing)" in webhook.messages[-1]["title"]
    assert re.search(r"Burning \$[\d,.]+/h.* \(over the last 6h; from only \d+s of readings, a rough "
                     r"figure\)\.", reminder), reminder
    assert message["title"].startswith("[CRITICAL] low-balance")


def test_silence_add_list_expire_and_the_reminder_when_it_ends(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, run_cli: RunCli) -> None:
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url()}, LOW, alerts='repeat_interval = "1s"')
    early = run_cli("silence", "add", "low-balance", "--for", "1h", config=cfg)
    assert early.code == 1 and "run `creditwatch check`" in early.stderr, early  # no database yet
    fake_api.set_balance(100.0, 95.0)
    assert run_cli("check", config=cfg, env=ENV).code == 2
    assert refs(webhook) == ["low-balance#1/first"]

    added = run_cli("silence", "add", "low-balance", "--for", "1h", "--comment", "topping up", config=cfg)
    assert added.code == 0, added
    silence_id = int(added.stdout.strip())
    [listed] = json.loads(run_cli("silence", "list", "--json", config=cfg).stdout)
    assert listed["id"] == silence_id and listed["rule"] == "low-balance" and listed["account"] is None
    assert listed["comment"] == "topping up"
    assert (datetime.fromisoformat(listed["ends_at"]) - datetime.fromisoformat(listed["starts_at"])
            ).total_seconds() == pytest.approx(3600, abs=5)
    assert "low-balance" in run_cli("silence", "list", config=cfg).stdout
    assert "silences" in run_cli("status", config=cfg).stdout

    # Silenced: the alert keeps firing (and counts for check's exit code) but sends nothing.
    assert run_cli("check", config=cfg, env=ENV).code == 2
    assert refs(webhook) == ["low-balance#1/first"]

    expired = run_cli("silence", "expire", str(silence_id), config=cfg)
    assert expired.code == 0 and "expired" in expired.stdout, expired
    assert json.loads(run_cli("silence", "list", "--json", config=cfg).stdout) == []
    # Still firing when the silence ends: a reminder goes out at once.
    assert run_cli("check", config=cfg, env=ENV).code == 2
    assert refs(webhook) == ["low-balance#1/first", "low-balance#1/repeat-2"]
    assert "(still firing)" in webhook.messages[-1]["title"]

    unknown = run_cli("silence", "expire", "999", config=cfg)
    assert unknown.code == 1 and "no silence #999" in unknown.stderr
    bad = run_cli("silence", "add", "nope", "--for", "1h", config=cfg)
    assert bad.code == 64 and "no rule named 'nope'" in bad.stderr


INHIBITED = """
[[rules]]
name = "low"
type = "threshold"
below = 20.0
inhibited_by = ["critically-low"]

[[rules]]
name = "critically-low"
type = "threshold"
below = 5.0
severity = "critical"
"""


def test_inhibition_both_ways(tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
                              run_cli: RunCli) -> None:
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url()}, INHIBITED)
    # Both fire at once: the lesser one is held back, but counts for the exit code.
    fake_api.set_balance(100.0, 97.0)
    check = run_cli("check", config=cfg, env=ENV)
    assert check.code == 2 and "low (warning)" in check.stdout, check
    assert refs(webhook) == ["critically-low#1/first"]
    # The inhibitor resolves while the lesser alert still fires: the lesser one is announced.
    fake_api.set_balance(100.0, 90.0)
    assert run_cli("check", config=cfg, env=ENV).code == 1
    assert refs(webhook)[0] == "critically-low#1/first"
    assert sorted(refs(webhook)[1:]) == ["critically-low#1/resolved", "low#1/first"]
    # The other way: the lesser one fires alone (announced), then the inhibitor: no more of the lesser.
    fake_api.set_balance(100.0, 70.0)  # $30 left: the lesser one resolves too
    run_cli("check", config=cfg, env=ENV)
    fake_api.set_balance(100.0, 90.0)  # $10 left: it fires alone, and is announced
    run_cli("check", config=cfg, env=ENV)
    assert refs(webhook)[-2:] == ["low#1/resolved", "low#2/first"]
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url()}, INHIBITED,
                   alerts='repeat_interval = "1s"')
    fake_api.set_balance(100.0, 97.0)  # the greater one fires: the lesser one's reminder is held back
    before = len(refs(webhook))
    assert run_cli("check", config=cfg, env=ENV).code == 2
    assert refs(webhook)[before:] == ["critically-low#2/first"]


def test_grouping_sends_one_message_per_channel_for_three_rules(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, run_cli: RunCli) -> None:
    three = LOW + """
[[rules]]
name = "under-twenty"
type = "threshold"
below = 20.0

[[rules]]
name = "under-thirty"
type = "threshold"
below = 30.0
severity = "info"
"""
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url()}, three, alerts="group = true")
    fake_api.set_balance(100.0, 96.0)
    assert run_cli("check", config=cfg, env=ENV).code == 2
    [batch] = webhook.messages
    assert batch["title"].startswith("[CRITICAL] 3 notifications (3 firing): ")
    assert batch["type"] == "failure"
    assert sorted(REF.findall(batch["message"])) == [
        "low-balance#1/first", "under-thirty#1/first", "under-twenty#1/first"]
    # Once and in order: the batch is one outbox row, delivered once.
    assert run_cli("check", config=cfg, env=ENV).code == 2
    assert len(webhook.messages) == 1
    with sqlite3.connect(tmp_path / "cw.db") as conn:
        assert conn.execute("SELECT count(*), min(status) FROM outbox").fetchone() == (1, "delivered")


def test_the_digest_once_per_period_across_a_restart_and_a_clock_step_with_its_chart(
        tmp_path: Path, fake_api: FakeOpenRouter, smtp: SmtpServer, run_cli: RunCli,
        restore_logging: None) -> None:
    cfg = settings(tmp_path, fake_api, {"mail": smtp.apprise_url()}, LOW,
                   extra='[digest]\nevery = "1h"\nat = "00:00"')
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    # History of the past hour, written by ticks at their own (earlier) times, without a digest.
    app = build(parse_settings(cfg.read_text().replace('every = "1h"', ""), ENV), ENV, need_key=True)
    app.migrate()
    for minutes in range(10, 60, 10):
        fake_api.set_balance(100.0, 50.0 + minutes / 10)
        app.tick(hour - timedelta(hours=1) + timedelta(minutes=minutes))
    app.close()

    fake_api.set_balance(100.0, 56.0)
    assert run_cli("check", config=cfg, env=ENV).code == 0
    [digest] = smtp.wait_for(1)
    assert digest.subject.startswith("[DIGEST] creditwatch hourly digest to ")
    lines = digest.body.splitlines()
    assert any(line.startswith("Spent: $4.00 ($4.00/h on average)") for line in lines), lines
    assert any(line.startswith("Lowest balance: $45.00") for line in lines), lines
    assert lines[-1] == f"ref: digest#{(hour - timedelta(hours=1)):%Y-%m-%dT%H:%MZ}"
    png = _png_part(digest.raw)
    assert png is not None and png.startswith(b"\x89PNG\r\n\x1a\n")

    # A restart (another process) does not send it again, nor does a clock stepped back an hour.
    assert run_cli("check", config=cfg, env=ENV).code == 0
    again = build(parse_settings(cfg.read_text(), ENV), ENV, need_key=True)
    try:
        again.tick(now - timedelta(hours=1))
        again.tick(now)
    finally:
        again.close()
    assert len(smtp.messages) == 1


def _png_part(raw: bytes) -> bytes | None:
    import email
    import email.policy

    message: Any = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        if part.get_content_type() == "image/png":
            return bytes(part.get_content())
    return None


def test_the_digest_lists_every_alert_that_fired_grouped_or_held_back(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        run_cli: RunCli, restore_logging: None) -> None:
    rules = LOW + """
[[rules]]
name = "under-twenty"
type = "threshold"
below = 20.0
channels = ["chat"]

[[rules]]
name = "under-thirty"
type = "threshold"
below = 30.0
inhibited_by = ["low-balance"]
channels = ["chat"]
"""
    cfg = settings(tmp_path, fake_api, {"chat": webhook.apprise_url(), "mail": smtp.apprise_url()},
                   rules.replace('severity = "critical"', 'severity = "critical"\nchannels = ["chat"]'),
                   alerts="group = true", extra='[digest]\nevery = "1h"\nat = "00:00"\nchannels = ["mail"]')
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    app = build(parse_settings(cfg.read_text().replace('every = "1h"', ""), ENV), ENV, need_key=True)
    app.migrate()
    fake_api.set_balance(100.0, 95.0)
    app.tick(hour - timedelta(minutes=30))
    app.close()
    [grouped] = webhook.messages  # one message for the two that may speak; under-thirty held back
    assert sorted(REF.findall(grouped["message"])) == ["low-balance#1/first", "under-twenty#1/first"]

    assert run_cli("check", config=cfg, env=ENV).code == 2
    [digest] = smtp.wait_for(1)
    assert ("Alerts of the period: low-balance#1/first, under-thirty#1/first, under-twenty#1/first"
            in digest.body.splitlines()), digest.body
