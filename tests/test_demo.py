"""`creditwatch demo` runs unattended through the real CLI: the real service against the
simulated account on loopback, its story's firing, reminder and resolved notifications on
stdout, its status page up while it runs, exit 0 within the contract's 3 minutes, and its
temporary database gone afterwards. No key and no settings file are needed."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from conftest import RunCli, StartCli

CONTRACT_LIMIT = 180  # seconds: "its story (firing, reminder, resolved) completes within 3 minutes"


def test_the_demo_tells_its_whole_story_and_cleans_up(run_cli: RunCli, tmp_path: Path) -> None:
    done = run_cli("demo", timeout=CONTRACT_LIMIT + 20, env={"OPENROUTER_API_KEY": None})
    assert done.code == 0, (done.stdout[-2000:], done.stderr[-2000:])
    out = done.stdout
    for kind in ("firing", "reminder", "resolved"):
        assert f"notification ({kind}):" in out, kind
    for rule in ("low-balance", "fast-burn", "fetch-failing", "ci-key-near-limit"):
        assert f"ref: {rule}" in out and re.search(rf"ref: {re.escape(rule)}\S*#\d+/resolved", out), rule
    for chapter in ("a burst of spend", "an outage", "a top-up"):
        assert f"story: {chapter}" in out
    assert re.search(r"demo complete in \d+s: \d+ notifications", out)
    page = re.search(r"status page: (http://127\.0\.0\.1:\d+/)", out)
    assert page is not None
    # It ran the real service: the start-up line names the loopback API and a throwaway SQLite file.
    started = re.search(r"creditwatch watching (\S+) every 1s; database sqlite:///(\S+); ", done.stderr)
    assert started is not None and started[1].startswith("127.0.0.1:")
    assert not Path(started[2]).exists() and not Path(started[2]).parent.exists()
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("*.db"))  # nothing written where it was started


def test_the_demo_page_is_up_while_it_runs(start_cli: StartCli) -> None:
    proc = start_cli("demo", env={"OPENROUTER_API_KEY": None})
    try:
        url = _wait_for_page(proc.stdout_path)
        with urllib.request.urlopen(url, timeout=30) as answer:
            body = answer.read().decode()
        assert answer.status == 200 and "<h2>default</h2>" in body
        with urllib.request.urlopen(url + "api/status", timeout=10) as answer:
            assert answer.status == 200
    finally:
        result = proc.stop()
    assert result.code in (0, 130), result.stderr[-2000:]
    assert "demo interrupted" in result.stdout or "demo complete" in result.stdout


def _wait_for_page(stdout: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"status page: (http://127\.0\.0\.1:\d+/)", stdout.read_text())
        if found:
            return found[1]
        time.sleep(0.2)
    raise AssertionError("the demo did not print its page's address")
