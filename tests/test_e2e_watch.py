"""Watching the watcher through the real `creditwatch run`: /metrics scraped by a real
Prometheus and accepted by promtool, /healthz following the database, a heartbeat per
tick (and /fail during an API outage), JSON logs, and the start-up line."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CliProcess, StartCli
from fakes import FakeOpenRouter, Resp, WebhookReceiver, write_settings
from prom import Prometheus, check_metrics, free_port, needs_prometheus, same

KEY = "sk-or-v1-e2e-watch-0010"
ENV = {"OPENROUTER_API_KEY": KEY}
HOOK_TOKEN = "hbTOKEN7f3c9a1d2e5b"  # a secret inside the heartbeat URL


def settings(tmp_path: Path, api: FakeOpenRouter, port: int, extra: str = "") -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "1s"

        [schedule]
        interval = "1s"

        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        timeout = "1s"

        [server]
        listen = "127.0.0.1:{port}"

        {extra}

        [[rules]]
        name = "low"
        type = "threshold"
        below = 50.0
        severity = "critical"
        """)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def served(port: int, path: str) -> Callable[[], tuple[int, str] | None]:
    def attempt() -> tuple[int, str] | None:
        try:
            return get(f"http://127.0.0.1:{port}{path}")
        except OSError:
            return None  # not listening yet
    return attempt


@pytest.fixture
def running(tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> Iterator[tuple[CliProcess, int]]:
    fake_api.set_balance(100.0, 58.0)  # $42 left: below the $50 line, "low" fires
    port = free_port()
    proc = start_cli("run", config=settings(tmp_path, fake_api, port), env=ENV)
    wait_until(served(port, "/healthz"), 20, "the server")
    yield proc, port


@needs_prometheus
def test_metrics_pass_promtool_and_a_real_prometheus_scrapes_them(
        tmp_path: Path, running: tuple[CliProcess, int]) -> None:
    proc, port = running
    status, body = wait_until(lambda: (m := get(f"http://127.0.0.1:{port}/metrics"))
                              and "creditwatch_remaining_usd" in m[1] and m, 20, "the first tick's figures")
    assert status == 200
    checked = check_metrics(body)
    assert checked.ok, checked
    for name in ("creditwatch_remaining_usd", "creditwatch_total_credits_usd", "creditwatch_total_usage_usd",
                 "creditwatch_last_success_timestamp_seconds", "creditwatch_fetches_total",
                 "creditwatch_tick_duration_seconds_bucket", "creditwatch_alert_firing",
                 "creditwatch_build_info"):
        assert name in body, name
    assert 'creditwatch_alert_firing{account="default",rule="low",severity="critical"} 1.0' in body
    assert "creditwatch_runway_seconds" not in body  # unknown without spend: absent, not made up
    assert KEY not in body

    with Prometheus(tmp_path / "prometheus") as prometheus:
        prometheus.set_targets([f"127.0.0.1:{port}"])
        assert prometheus.wait_for(f'up{{instance="127.0.0.1:{port}"}}', same(1.0)) == 1.0
        assert prometheus.wait_for("creditwatch_remaining_usd", same(42.0)) == 42.0
        assert prometheus.value('creditwatch_fetches_total{outcome="ok"}') >= 1.0
    assert proc.stop().code == 0


def test_healthz_follows_the_database(tmp_path: Path, running: tuple[CliProcess, int]) -> None:
    proc, port = running
    assert get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    locker = sqlite3.connect(tmp_path / "cw.db", timeout=30, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # the database is gone, as far as creditwatch can tell
        status, body = wait_until(lambda: (h := get(f"http://127.0.0.1:{port}/healthz"))[0] == 503 and h,
                                  30, "/healthz to turn 503")
        assert "failed on the database" in body and body.count("\n") == 1, body
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    wait_until(lambda: get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n"), 30, "/healthz back to 200")
    assert get(f"http://127.0.0.1:{port}/nothing-here")[0] == 404
    assert proc.stop().code == 0


def test_heartbeat_per_tick_and_fail_during_an_api_outage(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, start_cli: StartCli) -> None:
    beat = f"{webhook.origin}/ping/{HOOK_TOKEN}"
    cfg = settings(tmp_path, fake_api, free_port(), extra=f'[heartbeat]\nurl = "{beat}"\n'
                   '[logging]\nformat = "json"')
    fake_api.set_balance(100.0, 10.0)
    proc = start_cli("run", config=cfg, env=ENV)
    webhook.wait_for_requests(2, timeout=20)
    fake_api.set_default(Resp.status_only(503))  # the API is down: every fetch fails
    wait_until(lambda: any(r.path.endswith("/fail") for r in webhook.requests), 20, "a /fail ping")
    fake_api.set_balance(100.0, 10.0)
    seen = len(webhook.requests)
    wait_until(lambda: any(not r.path.endswith("/fail") for r in webhook.requests[seen:]), 20,
               "pings again once the API is back")
    result = proc.stop()
    assert result.code == 0, result
    paths = [r.path for r in webhook.requests]
    assert all(p in (f"/ping/{HOOK_TOKEN}", f"/ping/{HOOK_TOKEN}/fail") for p in paths), paths
    assert all(r.method == "GET" for r in webhook.requests)
    # One ping per tick: as many pings as ticks logged.
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    ticks = [r for r in records if r.get("event") == "tick"]
    assert abs(len(paths) - len(ticks)) <= 1, (len(paths), len(ticks))
    assert all({"ts", "level", "logger", "message", "fetch", "remaining", "duration_s", "fired",
                "repeated", "resolved", "delivered", "failed"} <= r.keys() for r in ticks)
    failed = [r for r in ticks if r["fetch"] != "ok"]
    assert failed and all(r["level"] == "WARNING" for r in failed)  # a failed fetch is a WARNING
    assert HOOK_TOKEN not in result.stderr and KEY not in result.stderr


def test_the_startup_line_says_what_is_watched(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> None:
    port = free_port()
    cfg = settings(tmp_path, fake_api, port)
    proc = start_cli("run", config=cfg, env=ENV)
    wait_until(served(port, "/healthz"), 20, "the server")
    result = proc.stop()
    [line] = [x for x in result.stderr.splitlines() if "creditwatch watching" in x]
    assert re.search(r"watching 127\.0\.0\.1:\d+ every 1s; database sqlite:///.*cw\.db; channels: none; "
                     rf"rules: low, fetch-failing; server: http://127\.0\.0\.1:{port}$", line), line


def test_pending_alerts_show_in_status_json_and_the_check_line(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: Any) -> None:
    cfg = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        [[rules]]
        name = "slow-low"
        type = "threshold"
        below = 50.0
        for = "1h"
        """)
    fake_api.set_balance(100.0, 58.0)
    check = run_cli("check", config=cfg, env=ENV)
    assert check.code == 0, check  # pending leaves the exit code alone
    assert "nothing firing; pending: slow-low (warning)" in check.stdout, check.stdout
    doc = json.loads(run_cli("status", "--json", config=cfg).stdout)
    [pending] = doc["pending"]
    assert pending["rule"] == "slow-low" and pending["severity"] == "warning"
    assert pending["since"] is not None and pending["fires_at"] is not None and doc["alerts"] == []
    text = run_cli("status", config=cfg).stdout
    assert "pending     1 pending" in text and "slow-low since" in text and "fires at" in text
