"""Fault injection: an API that accepts the connection and never answers.

`check` must end within its timeout (plus start-up) and say UNKNOWN; `run` must
keep ticking at max(interval, timeout) without skipping ticks forever or piling
them up, store a reading as soon as the API answers again, and stop on SIGTERM
within the timeout even with a hanging fetch in hand.
"""

from __future__ import annotations

import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli, StartCli
from fakes import FakeOpenRouter, Resp, write_settings

KEY = "sk-or-v1-faults-hang-0001"
ENV = {"OPENROUTER_API_KEY": KEY}
TIMEOUT = 2.0
MARGIN = 2.5
HANG = Resp(hang=True)


def _settings(tmp_path: Path, api: FakeOpenRouter) -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "{TIMEOUT:g}s"

        [schedule]
        interval = "1s"

        [database]
        url = "sqlite:///{tmp_path}/cw.db"
    """)


def _json(run_cli: RunCli, cfg: Path, *args: str) -> Any:
    result = run_cli(*args, config=cfg, env=ENV)
    assert result.code == 0, result
    return json.loads(result.stdout)


@pytest.mark.slow
def test_check_against_a_hanging_api_ends_within_the_timeout_as_unknown(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli) -> None:
    cfg = _settings(tmp_path, fake_api)
    assert run_cli("db", "upgrade", config=cfg, env=ENV).code == 0  # migration is not timed
    fake_api.set_default(HANG)

    started = time.monotonic()
    result = run_cli("check", config=cfg, env=ENV, timeout=30)
    took = time.monotonic() - started

    assert result.code == 3, result
    assert took < TIMEOUT + MARGIN, f"check took {took:.2f}s against a {TIMEOUT:g}s timeout"
    assert "Traceback" not in result.stderr, result.stderr
    assert fake_api.count >= 1
    status = _json(run_cli, cfg, "status", "--json")
    assert status["last_fetch"]["ok"] is False, status
    assert "timed out" in str(status["last_fetch"]["error"]), status
    assert _json(run_cli, cfg, "history", "--format", "json") == []
    print(f"\ncheck against a hanging API: exit {result.code} after {took:.2f}s")


def _gaps(api: FakeOpenRouter, n: int) -> list[float]:
    seen = api.wait_for_requests(n, timeout=30)
    return [b.at - a.at for a, b in itertools.pairwise(seen)]


@pytest.mark.slow
def test_run_against_a_hanging_api_ticks_every_max_of_interval_and_timeout(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> None:
    cfg = _settings(tmp_path, fake_api)
    fake_api.set_default(HANG)
    proc = start_cli("run", config=cfg, env=ENV)

    gaps = _gaps(fake_api, 3)
    expected = max(1.0, TIMEOUT)
    assert all(expected - 0.3 < gap < expected + 0.6 for gap in gaps), gaps
    # A slow tick is the tick's own news (one line); the scheduler adds none of its own.
    skipped = [line for line in proc.output()[1].splitlines() if "apscheduler" in line]
    assert not skipped, skipped


@pytest.mark.slow
def test_run_recovers_from_a_hanging_api_and_stops_on_sigterm_mid_hang(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, start_cli: StartCli) -> None:
    cfg = _settings(tmp_path, fake_api)
    fake_api.set_default(HANG)
    proc = start_cli("run", config=cfg, env=ENV)

    # Each tick waits out the timeout; no tick is skipped forever, none piles up.
    gaps = _gaps(fake_api, 3)
    print(f"\nrun against a hanging API: request gaps {[round(g, 2) for g in gaps]}")
    assert proc.poll() is None, proc.output()
    assert all(gap > 1.0 - 0.3 for gap in gaps), f"ticks piled up: {gaps}"
    assert all(gap < 2 * max(1.0, TIMEOUT) + 1.5 for gap in gaps), f"a tick was skipped: {gaps}"

    # The API recovers: the next tick stores a reading.
    fake_api.set_default(Resp.credits(100.0, 12.5))
    deadline = time.monotonic() + 2 * TIMEOUT + 5
    while not (rows := _json(run_cli, cfg, "history", "--format", "json")):
        assert time.monotonic() < deadline, "no reading stored after the API recovered"
        time.sleep(0.2)
    assert {r["total_usage"] for r in rows} == {12.5}, rows
    assert _json(run_cli, cfg, "status", "--json")["last_fetch"]["ok"] is True

    # SIGTERM while a hanging fetch is in hand: exit 0 within the timeout and a margin.
    fake_api.set_default(HANG)
    fake_api.wait_for_requests(fake_api.count + 1, timeout=10)
    started = time.monotonic()
    result = proc.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - started
    assert result.code == 0, result
    assert took < TIMEOUT + MARGIN, f"stopping took {took:.2f}s"
    assert "Traceback" not in result.stderr, result.stderr
    assert "finishing the tick in hand" in result.stderr
    print(f"SIGTERM mid-hang -> exit 0 after {took:.2f}s")
