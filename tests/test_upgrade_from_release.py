"""A database written by the first release (commit d3abefb, one account) upgrades to accounts
with nothing lost: its history, rollups, fetch attempts, alert states and outbox all become
the account "default", and the service carries on where the release left off.

The old database is built by the release's own code, taken from this repository's history
(`git archive`), ticking in a subprocess over 40 simulated days so that retention has
folded raw readings into hourly rollups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, RunCli
from fakes import FakeOpenRouter, WebhookReceiver, write_settings
from sqlalchemy import create_engine, text

RELEASE = "d3abefb"  # the first release: issues 2-5, before accounts
KEY = "sk-or-v1-upgrade-0011"
ENV = {"OPENROUTER_API_KEY": KEY}

BUILD = textwrap.dedent('''
    import argparse, os, sys
    from datetime import UTC, datetime, timedelta
    from worker import commands
    from worker.tick import run_tick
    config, start = sys.argv[1], datetime(2026, 10, 1, tzinfo=UTC)
    loaded = commands.load(argparse.Namespace(config=config, log_level="ERROR"), os.environ, need_key=True)
    commands.migrate(loaded)
    deps = commands._tick_deps(loaded, os.environ)
    for tick in range(40 * 24):  # hourly for 40 days: the first 10 days fold into rollups
        run_tick(deps, start + timedelta(hours=tick))
''')


def release_tree(tmp: Path) -> Path | None:
    """The release's source, from git; None when this clone lacks the commit."""
    done = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", RELEASE], capture_output=True, check=False)
    if done.returncode != 0:
        return None
    with tarfile.open(fileobj=BytesIO(done.stdout)) as archive:
        archive.extractall(tmp, filter="data")
    # The release imports its migrations as worker.migrations (a package-dir mapping in
    # pyproject): put them where a plain PYTHONPATH finds them.
    (tmp / "migrations").rename(tmp / "worker" / "migrations")
    return tmp


@pytest.fixture
def old_database(tmp_path: Path, db_url: str, fake_api: FakeOpenRouter,
                 webhook: WebhookReceiver) -> Iterator[tuple[str, Path]]:
    tree = release_tree(tmp_path / "release")
    if tree is None:
        pytest.fail(f"git archive {RELEASE} failed: the upgrade test needs the repository's history")
    fake_api.set_balance(100.0, 90.0)
    config = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        [database]
        url = "{db_url}"
        keep_raw = "30d"
        [alerts]
        repeat_interval = "30d"
        [[channels]]
        name = "hook"
        url = "{webhook.apprise_url()}"
        [[rules]]
        name = "low"
        type = "threshold"
        below = 20.0
        """, name="old.toml")
    webhook.set_failing(True)  # so that the release leaves undelivered messages behind
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDITWATCH_")}
    done = subprocess.run([sys.executable, "-c", BUILD, str(config)], cwd=tree, capture_output=True,
                          text=True, env={**env, **ENV, "PYTHONPATH": str(tree)}, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    webhook.set_failing(False)
    yield db_url, config


def rows(db_url: str, query: str) -> list[tuple[Any, ...]]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(query))]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_an_old_database_upgrades_into_the_default_account_with_nothing_lost(
        tmp_path: Path, old_database: tuple[str, Path], fake_api: FakeOpenRouter,
        webhook: WebhookReceiver, run_cli: RunCli) -> None:
    db_url, old_config = old_database
    before = {
        "readings": rows(db_url, "SELECT fetched_at, total_credits, total_usage FROM readings ORDER BY id"),
        "rollups": rows(db_url, "SELECT hour, count, usage_first, usage_last FROM rollups ORDER BY hour"),
        "attempts": rows(db_url, "SELECT at, kind, streak FROM fetch_attempts ORDER BY id"),
        "states": rows(db_url, "SELECT rule, status, period, firing_since FROM alert_states ORDER BY rule"),
        "outbox": rows(db_url, "SELECT key, channel, status, attempts FROM outbox ORDER BY id"),
    }
    assert before["readings"] and before["rollups"] and before["attempts"] and before["outbox"]
    assert [s[:2] for s in before["states"] if s[1] != "inactive"] == [("low", "firing")]

    upgraded = run_cli("db", "upgrade", config=old_config)
    assert upgraded.code == 0, upgraded
    assert "upgraded from revision 0003" in upgraded.stdout
    # The same settings, but for the simulated weeks: the release's messages are older than
    # the default give_up_after (24h), and this test wants them delivered, not dropped.
    config = write_settings(tmp_path, old_config.read_text().replace(
        '[alerts]\nrepeat_interval = "30d"', '[alerts]\nrepeat_interval = "30d"\ngive_up_after = "1y"'),
        name="new.toml")

    after = {
        "readings": rows(db_url, "SELECT fetched_at, total_credits, total_usage FROM readings "
                                 "WHERE account = 'default' ORDER BY id"),
        "rollups": rows(db_url, "SELECT hour, count, usage_first, usage_last FROM rollups "
                                "WHERE account = 'default' ORDER BY hour"),
        "attempts": rows(db_url, "SELECT at, kind, streak FROM fetch_attempts WHERE account = 'default' "
                                 "ORDER BY id"),
        "states": rows(db_url, "SELECT rule, status, period, firing_since FROM alert_states "
                               "WHERE account = 'default' AND key = '' ORDER BY rule"),
        "outbox": rows(db_url, "SELECT key, channel, status, attempts FROM outbox WHERE account = 'default' "
                               "ORDER BY id"),
    }
    assert after == before

    # The service goes on where the release left off: the alert still fires (no second
    # "first"), its waiting messages are delivered in order, and history reaches the rollups.
    status = json.loads(run_cli("status", "--json", config=config).stdout)
    assert [a["rule"] for a in status["alerts"]] == ["low"] and status["account"] == "default"
    waiting = [k for k, _, s, _ in before["outbox"] if s != "delivered"]
    check = run_cli("check", config=config, env=ENV)
    assert check.code == 1, check
    refs = [line.removeprefix("ref: ") for m in webhook.messages
            for line in str(m["message"]).splitlines() if line.startswith("ref: ")]
    assert refs[: len(waiting)] == waiting
    assert not [r for r in refs if r.endswith("/first") and r not in waiting], refs
    history = json.loads(run_cli("history", "--since", "100d", "--format", "json", "--account", "default",
                                 config=config).stdout)
    assert len(history) > len(before["readings"])  # raw readings and points from the rollups
