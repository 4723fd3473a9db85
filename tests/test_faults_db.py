"""Fault injection: the database goes away under a running `creditwatch run`.

(a) SQLite locked by another writer for longer than the busy timeout; (b) a
private PostgreSQL cluster stopped and started again. In both, a failed tick is
one log line and no traceback, the service stays up, the ticks recover by
themselves, and nothing written before the outage is lost or sent twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CliProcess, RunCli, StartCli
from fakes import FakeOpenRouter, WebhookReceiver, write_settings

from worker.db import SQLITE_BUSY_MS

KEY = "sk-or-v1-faults-db-0001"
ENV = {"OPENROUTER_API_KEY": KEY}
BUSY_TIMEOUT = SQLITE_BUSY_MS / 1000  # follows database.timeout's default (10s), less a margin
TICK_FAILED = "tick failed, will retry at the next one"
REF = re.compile(r"^ref: (\S+)$", re.MULTILINE)
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _settings(tmp_path: Path, api: FakeOpenRouter, url: str, channels: str = "",
              rules: str = "") -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "2s"

        [schedule]
        interval = "1s"

        [database]
        url = "{url}"
        {channels}
        {rules}
    """)


def _wait(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)
    return value


def _stderr_lines(proc: CliProcess) -> list[str]:
    return proc.output()[1].splitlines()


def _failed_ticks(lines: list[str]) -> list[str]:
    return [line for line in lines if TICK_FAILED in line]


def _tick_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "creditwatch: tick fetch=" in line]


def _stop(proc: CliProcess) -> list[str]:
    result = proc.stop(signal.SIGTERM, timeout=30)
    assert result.code == 0, result
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.splitlines()


# --------------------------------------------------------------------------- (a) SQLite locked


def _sqlite_counts(path: Path) -> tuple[int, int, int]:
    """Readings, fetch attempts, ok attempts; zeros until `run` has migrated the file."""
    if not path.exists():
        return 0, 0, 0
    with sqlite3.connect(path, timeout=10) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone():
            return 0, 0, 0
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        attempts = conn.execute("SELECT count(*) FROM fetch_attempts").fetchone()[0]
        ok = conn.execute("SELECT count(*) FROM fetch_attempts WHERE kind = 'ok'").fetchone()[0]
    return readings, attempts, ok


def _fetched(failed: list[str]) -> list[str]:
    """The failed ticks that fetched before they failed: not those that failed on the lease."""
    return [line for line in failed if "the leader lease" not in line]


@pytest.mark.slow
def test_sqlite_locked_by_another_writer_fails_ticks_cleanly_and_recovers(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> None:
    path = tmp_path / "cw.db"
    cfg = _settings(tmp_path, fake_api, f"sqlite:///{path}")
    fake_api.set_balance(100.0, 20.0)
    proc = start_cli("run", config=cfg, env=ENV)
    _wait(lambda: _sqlite_counts(path)[0] >= 2, 15, "two readings")

    # Take the write lock between two ticks, and hold it past the busy timeout.
    fake_api.wait_for_requests(fake_api.count + 1, timeout=5)
    time.sleep(0.3)  # the tick in hand is done with the database
    holder = sqlite3.connect(path, timeout=5, isolation_level=None)
    before = len(_stderr_lines(proc))
    try:
        holder.execute("BEGIN IMMEDIATE")
        held_from = fake_api.count
        _wait(lambda: _failed_ticks(_stderr_lines(proc)[before:]), BUSY_TIMEOUT + 5,
              "a tick to fail on the lock")
        time.sleep(1.0)
        assert proc.poll() is None, proc.output()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    readings = _sqlite_counts(path)[0]
    _wait(lambda: _sqlite_counts(path)[0] > readings, 5, "a reading after the lock was released")

    lines = _stop(proc)
    failed = _failed_ticks(lines)
    assert failed and all("database is locked" in line for line in failed), failed
    assert all(" ERROR creditwatch: " in line for line in failed), failed
    # One line per failed tick: every fetch is either stored or in exactly one such line (a
    # tick that failed on the leader lease fetched nothing: it could not know it leads).
    stored, attempts, ok = _sqlite_counts(path)
    assert stored == ok == attempts, (stored, ok, attempts)
    assert fake_api.count == attempts + len(_fetched(failed)), (fake_api.count, attempts, failed)
    assert len(_tick_lines(lines)) == attempts
    assert fake_api.count > held_from
    noise = [line for line in lines[before:] if " WARNING " in line or " ERROR " in line]
    print(f"\nSQLite locked: {len(failed)} failed tick(s), {stored} readings, "
          f"{len(noise) - len(failed)} other warning line(s) meanwhile")


# --------------------------------------------------------------------------- (b) PostgreSQL down


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Cluster:
    """A private PostgreSQL 15 cluster owned by user postgres in a temporary directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cw-pg-", dir="/tmp"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-o", opts,
                          "-l", self.dir / "server.log", "-w", "start")

    def stop(self) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        done = subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"),
                               "-D", str(self.data), "status"], capture_output=True)
        return done.returncode == 0

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _as_postgres(self, *argv: object) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)],
                              capture_output=True, text=True, timeout=120, cwd=self.dir)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)


@pytest.fixture
def cluster() -> Iterator[_Cluster]:
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL cluster needs root (to run initdb as user postgres)")
    missing = [p for p in (PG_BIN / "initdb", PG_BIN / "pg_ctl") if not p.exists()]
    if missing or shutil.which("runuser") is None:
        pytest.skip(f"PostgreSQL 15 binaries or runuser missing: {missing or 'runuser'}")
    made = _Cluster()
    try:
        made.start()
        yield made
    finally:
        if made.running():
            made.stop()
        made.remove()


def _pg_query(url: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg  # lazy: only this case needs the driver

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        return list(conn.execute(query))


def _pg_count(url: str, query: str) -> int:
    """A count(*), or 0 while `run` has not created the table yet."""
    import psycopg  # lazy: see _pg_query

    try:
        return int(_pg_query(url, query)[0][0])
    except psycopg.errors.UndefinedTable:
        return 0


LOW_RULE = """
[[rules]]
name = "low"
type = "threshold"
below = 10.0
"""


@pytest.mark.slow
def test_postgresql_stopped_and_started_again_ticks_recover_and_nothing_is_lost(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli, run_cli: RunCli, cluster: _Cluster) -> None:
    channel = f'\n[[channels]]\nname = "hook"\nurl = "{webhook.apprise_url()}"\n'
    cfg = _settings(tmp_path, fake_api, cluster.url, channel, LOW_RULE)
    fake_api.set_balance(100.0, 95.0)  # $5 left: the alert fires at the first tick
    webhook.set_failing(True)  # so its message is still in the outbox when the database goes
    proc = start_cli("run", config=cfg, env=ENV)

    def count(query: str) -> int:
        return _pg_count(cluster.url, query)

    _wait(lambda: count("SELECT count(*) FROM readings") >= 2, 20, "readings", step=0.2)
    pending = _pg_query(cluster.url, "SELECT key FROM outbox WHERE status <> 'delivered'")
    assert [k for (k,) in pending] == ["low#1/first"], pending

    before = len(_stderr_lines(proc))
    cluster.stop()
    _wait(lambda: len(_failed_ticks(_stderr_lines(proc)[before:])) >= 3, 20,
          "three failed ticks", step=0.2)
    assert proc.poll() is None, proc.output()
    webhook.set_failing(False)
    cluster.start()
    readings = count("SELECT count(*) FROM readings")
    _wait(lambda: count("SELECT count(*) FROM readings") >= readings + 2, 20,
          "readings after the restart", step=0.2)
    # 20 s: should the stop have fallen between a claim and its release, the row
    # waits out its 15 s lease first.
    _wait(lambda: webhook.messages, 20, "the message held in the outbox")

    lines = _stop(proc)
    failed = _failed_ticks(lines)
    assert len(failed) >= 3, failed
    for line in failed:
        assert " ERROR creditwatch: " in line and "database postgresql+psycopg://" in line, line
    outbox = _pg_query(cluster.url, "SELECT key, status FROM outbox ORDER BY id")
    assert outbox == [("low#1/first", "delivered")], outbox
    refs = Counter(r for m in webhook.messages for r in REF.findall(str(m["message"])))
    assert refs == Counter({"low#1/first": 1}), refs
    attempts = count("SELECT count(*) FROM fetch_attempts")
    assert count("SELECT count(*) FROM readings") == attempts
    assert fake_api.count == attempts + len(_fetched(failed)), (fake_api.count, attempts, len(failed))
    assert len(_tick_lines(lines)) == attempts
    status = run_cli("status", "--json", config=cfg, env=ENV)
    assert status.code == 0, status
    doc = json.loads(status.stdout)
    assert doc["last_fetch"]["ok"] is True and doc["undelivered_notifications"] == 0, doc
    print(f"\nPostgreSQL down: {len(failed)} failed ticks, {attempts} ticks stored; "
          f"first failure: {failed[0].split(': ', 1)[1]}")
