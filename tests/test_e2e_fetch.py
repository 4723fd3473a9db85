"""End to end through the real `creditwatch check`: failed fetches are counted, classified,
stored as failures (never as readings) and leave the balance alerts as they were."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli
from fakes import CaptureServer, FakeOpenRouter, Resp, WebhookReceiver, make_settings

KEY = "sk-or-v1-e2e-fetch-0002"


def status_json(cli: Cli, cfg: Path) -> dict[str, Any]:
    result = cli(cfg, "status", "--json")
    assert result.code == 0, result
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def history_json(cli: Cli, cfg: Path) -> list[dict[str, Any]]:
    result = cli(cfg, "history", "--format", "json")
    assert result.code == 0, result
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


API_DOWN_RULE = """
[[rules]]
name = "api-down"
type = "fetch_failure"
consecutive = 2
severity = "critical"
"""


# --------------------------------------------------------------------------- counting


def test_server_errors_count_until_consecutive_then_fire_once_and_resolve(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()},
                        rules=API_DOWN_RULE)
    fake_api.set_default(Resp.json({"error": {"message": "upstream down", "code": 500}},
                                   status=500))

    first = cli(cfg, "check")
    assert first.code == 3, first
    assert webhook.requests == [], "fired after 1 failure, before consecutive = 2"

    second = cli(cfg, "check")
    assert second.code == 2, second
    [fired] = webhook.messages
    assert "api-down" in str(fired["title"])
    assert "resolved" not in str(fired["title"]).lower()
    assert "api-down" in fired["message"]
    assert fired["type"] == "failure"

    third = cli(cfg, "check")
    assert third.code == 2, third
    assert len(webhook.messages) == 1, "a still-firing fetch_failure alert was repeated early"
    doc = status_json(cli, cfg)
    assert [a["rule"] for a in doc["alerts"]] == ["api-down"]
    assert doc["alerts"][0]["severity"] == "critical"
    assert doc["last_fetch"]["ok"] is False
    assert "500" in doc["last_fetch"]["error"]

    fake_api.set_balance(100.0, 40.0)
    recovered = cli(cfg, "check")
    assert recovered.code == 0, recovered
    assert len(webhook.messages) == 2
    resolved = webhook.messages[1]
    assert "resolved" in str(resolved["title"]).lower() and "api-down" in str(resolved["title"])
    assert resolved["type"] == "success"
    assert "$60.00" in resolved["message"]


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_fires_every_fetch_failure_rule_at_once(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli,
        status: int) -> None:
    rules = """
    [[rules]]
    name = "patient"
    type = "fetch_failure"
    consecutive = 50
    severity = "critical"

    [[rules]]
    name = "also-patient"
    type = "fetch_failure"
    consecutive = 10
    """
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()}, rules=rules)
    fake_api.set_default(Resp.json({"error": {"message": "No auth credentials found",
                                              "code": status}}, status=status))

    result = cli(cfg, "check")

    assert result.code == 2, result
    messages = webhook.messages
    assert sorted(m["type"] for m in messages) == ["failure", "warning"]
    for message in messages:
        text = str(message["message"]).lower()
        assert "invalid" in text or "not a management key" in text, message
    titles = " ".join(str(m["title"]) for m in messages)
    assert "patient" in titles and "also-patient" in titles
    if status == 401:
        doc = status_json(cli, cfg)
        assert doc["last_fetch"]["ok"] is False
        error = doc["last_fetch"]["error"].lower()
        assert "invalid" in error or "not a management key" in error


def test_auth_failure_fires_the_default_rule_at_once(
        tmp_path: Path, webhook: WebhookReceiver, cli: Cli) -> None:
    with FakeOpenRouter(api_key="sk-or-v1-the-right-one") as api:  # ours is refused: 401
        cfg = make_settings(tmp_path, api, channels={"hook": webhook.apprise_url()})
        result = cli(cfg, "check")
        assert api.count == 1, "an auth failure was retried"
    assert result.code == 2, result
    [message] = webhook.messages
    assert "fetch-failing" in str(message["title"])
    assert message["type"] == "failure"
    text = str(message["message"]).lower()
    assert "invalid" in text or "not a management key" in text


# --------------------------------------------------------------------------- bad bodies


def _raw_json(text: str) -> Resp:
    return Resp(status=200, body=text.encode(), content_type="application/json")


BAD_BODIES = {
    "html-200": Resp.html("<html><body>Please log in to the Wi-Fi</body></html>"),
    "not-json": _raw_json("this is not json {"),
    "nan": _raw_json('{"data": {"total_credits": NaN, "total_usage": 1.0}}'),
    "infinity": _raw_json('{"data": {"total_credits": 100.0, "total_usage": Infinity}}'),
    "negative": Resp.credits(100.0, -5.0),
    "string": Resp.credits("100.0", "1.0"),
    "boolean": Resp.credits(True, False),
    "missing-field": Resp.json({"data": {"total_credits": 100.0}}),
    "1e309": _raw_json('{"data": {"total_credits": 1e309, "total_usage": 1.0}}'),
}


# Two groups, each on its own database: one good reading, then every bad body in turn.
BODY_GROUPS = {
    "shape": ["html-200", "not-json", "missing-field", "string", "boolean"],
    "value": ["nan", "infinity", "1e309", "negative"],
}


@pytest.mark.parametrize("group", list(BODY_GROUPS))
def test_bad_bodies_are_failed_fetches_not_readings(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli,
        group: str) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()}, rules="""
    [[rules]]
    name = "low"
    type = "threshold"
    below = 50.0
    severity = "critical"

    [[rules]]
    name = "unreadable"
    type = "fetch_failure"
    consecutive = 100
    """)
    fake_api.set_balance(100.0, 10.0)
    assert cli(cfg, "check").code == 0

    for name in BODY_GROUPS[group]:
        fake_api.set_default(BAD_BODIES[name])
        result = cli(cfg, "check")
        # UNKNOWN: nothing fires on a body that is not a finite, non-negative balance
        # (a NaN or negative "remaining" must not trip, or hide, the threshold either).
        assert result.code == 3, (name, result)
        assert "fetch failed" in result.stdout, (name, result)
        assert "Traceback" not in result.stderr, name

    rows = history_json(cli, cfg)
    assert [(r["total_credits"], r["total_usage"], r["remaining"]) for r in rows] == [
        (100.0, 10.0, 90.0)], "a bad body was stored as a reading"
    good = rows[0]
    doc = status_json(cli, cfg)
    assert doc["fetched_at"] == good["fetched_at"] and doc["remaining"] == 90.0
    assert doc["last_fetch"]["ok"] is False
    assert isinstance(doc["last_fetch"]["error"], str) and doc["last_fetch"]["error"]
    assert doc["alerts"] == []
    assert webhook.requests == []


# --------------------------------------------------------------------------- balance alerts


def test_failed_fetch_neither_resolves_nor_repeats_a_firing_balance_alert(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    rules = '[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 10.0\n'
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url()},
                        rules=rules, repeat="1s")
    fake_api.set_balance(100.0, 95.0)
    assert cli(cfg, "check").code == 1
    assert len(webhook.messages) == 1
    time.sleep(1.2)  # a reminder is now due

    fake_api.set_default(Resp.status_only(503))
    failed = cli(cfg, "check")
    assert failed.code == 1, failed  # the warning still stands
    assert len(webhook.messages) == 1, "a failed tick repeated or resolved a balance alert"
    doc = status_json(cli, cfg)
    assert [a["rule"] for a in doc["alerts"]] == ["low"]
    assert doc["remaining"] == 5.0

    fake_api.set_balance(100.0, 95.0)  # readable again, still low: the due reminder goes out
    assert cli(cfg, "check").code == 1
    assert len(webhook.messages) == 2
    assert "resolved" not in str(webhook.messages[1]["title"]).lower()


# --------------------------------------------------------------------------- transport


def test_trickling_server_is_cut_at_the_timeout(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={}, timeout="1s")
    fake_api.set_default(Resp.credits(100.0, 1.0, trickle=0.3))  # ~15 s for the whole body

    started = time.monotonic()
    result = cli(cfg, "check")
    elapsed = time.monotonic() - started

    assert result.code == 3, result
    assert elapsed < 6, f"check took {elapsed:.1f}s with timeout = 1s"
    assert "fetch failed" in result.stdout


def test_redirect_is_not_followed(
        tmp_path: Path, fake_api: FakeOpenRouter, capture_server: CaptureServer,
        cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={})
    fake_api.set_default(Resp.redirect(capture_server.url))

    result = cli(cfg, "check")

    assert result.code == 3, result
    assert capture_server.count == 0
