"""Several `run` replicas on one database, as the contract's "Several replicas, one voice" says:
one leader calls the API once per interval, a killed leader is replaced within
max(3 x interval, 15 s) + interval, a frozen leader that wakes writes nothing, a replica
whose clock is 90 s off stamps the same history, and three replicas starting together on an
old database migrate once and fold old readings once. Real processes (the CLI), the
machine's PostgreSQL, SIGKILL, SIGSTOP and libfaketime.

Before issue 13 every replica ticked: three replicas made 45 API calls in 15 s, a skewed
clock split the readings into timelines that hid the burn rate, and old readings were
folded once per replica.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import CliProcess, RunCli, StartCli
from fakes import FakeOpenRouter, Resp, WebhookReceiver, write_settings
from sqlalchemy import create_engine, insert, text

from worker import db

KEY = "sk-or-v1-failover-0013"
ENV = {"OPENROUTER_API_KEY": KEY}
REF = re.compile(r"^ref: (\S+)$", re.MULTILINE)
BOUND = 16.0  # max(3 x 1 s, 15 s) + 1 s: the contract's failover bound at a 1 s interval
LOW = '[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 10.0\n'
BURN = '[[rules]]\nname = "fast-burn"\ntype = "burn_rate"\nwindow = "20s"\nabove = 100.0\n'
# Debian's libfaketime (.ci/run installs it): a process whose wall clock is off by a set amount.
FAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"), Path("/missing/libfaketimeMT.so.1"))

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- replicas


@dataclass
class Replica:
    proc: CliProcess
    port: int
    config: Path

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:
            return 0, f"unreachable: {err}"

    def health(self) -> str:
        code, body = self.get("/healthz")
        return body.strip() if code == 200 else f"{code} {body.strip()}"

    def leading(self) -> float | None:
        """creditwatch_leader, or None before the first tick (or when unreachable)."""
        code, body = self.get("/metrics")
        found = re.search(r"^creditwatch_leader (\S+)$", body, re.MULTILINE) if code == 200 else None
        return float(found.group(1)) if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def replica_settings(tmp_path: Path, name: str, api: FakeOpenRouter, database: str, hook: str, port: int,
                     rules: str = LOW, alerts: str = 'repeat_interval = "1s"') -> Path:
    return write_settings(tmp_path, (
        f'[openrouter]\nbase_url = "{api.base_url}"\ntimeout = "2s"\n\n'
        f'[schedule]\ninterval = "1s"\n\n'
        f'[database]\nurl = "{database}"\n\n'
        f'[server]\nlisten = "127.0.0.1:{port}"\n\n'
        f'[alerts]\n{alerts}\n\n'
        f'[[channels]]\nname = "hook"\nurl = "{hook}"\n\n{rules}'), name=f"{name}.toml")


def start_replicas(start_cli: StartCli, tmp_path: Path, count: int, api: FakeOpenRouter, database: str,
                   hook: str, env: dict[str, str] | None = None, first: int = 0,
                   **kwargs: Any) -> list[Replica]:
    out = []
    for i in range(first, first + count):
        port = free_port()
        config = replica_settings(tmp_path, f"replica-{i}", api, database, hook, port, **kwargs)
        out.append(Replica(start_cli("run", config=config, env={**ENV, **(env or {})}), port, config))
    return out


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.1)
    return value


def one_leader(replicas: list[Replica], timeout: float) -> Replica:
    """Wait until every replica has ticked and exactly one of them leads; that one."""
    def settled() -> Replica | None:
        roles = [r.leading() for r in replicas]
        return replicas[roles.index(1.0)] if None not in roles and roles.count(1.0) == 1 else None

    try:
        return wait_until(settled, timeout, "exactly one leader")  # type: ignore[no-any-return]
    except AssertionError as err:
        logs = "\n".join(f"--- replica pid {r.proc.pid}:\n{r.proc.output()[1][-1500:]}" for r in replicas)
        raise AssertionError(f"{err}\n{logs}") from None


def arrivals(webhook: WebhookReceiver) -> list[tuple[float, str]]:
    """(monotonic arrival, ref) of every message the receiver accepted, in arrival order."""
    return [(r.at, ref) for r in webhook.requests
            for ref in REF.findall(str(json.loads(r.body).get("message", "")))]


def stop(replica: Replica) -> str:
    result = replica.proc.stop(signal.SIGTERM, timeout=60)
    assert result.code == 0, result
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


def query(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)))
    finally:
        engine.dispose()


def delivered_in_order_once(url: str, webhook: WebhookReceiver, stopped_leaders: int) -> list[str]:
    """Nothing lost (every queued message arrived or still waits, none dropped), no message
    arrived twice beyond one copy per stopped leader, and the arrivals kept the queue's order."""
    rows = query(url, "SELECT key, status FROM outbox ORDER BY id")
    queued = [str(key) for key, _ in rows]
    assert not [key for key, status in rows if status == "dropped"]
    refs = [ref for _, ref in arrivals(webhook)]
    delivered = {str(key) for key, status in rows if status == "delivered"}
    assert delivered <= set(refs), sorted(delivered - set(refs))
    assert set(refs) <= set(queued)
    copies = len(refs) - len(set(refs))
    assert copies <= stopped_leaders, refs
    position = {key: i for i, key in enumerate(queued)}
    firsts = list(dict.fromkeys(refs))  # a copy repeats an older message: order of first arrivals
    backwards = [(a, b) for a, b in itertools.pairwise(firsts) if position[b] < position[a]]
    assert not backwards, backwards
    assert firsts == queued[: len(firsts)], "a message was skipped while a later one arrived"
    return refs


def readings_in_time_order(url: str) -> list[datetime]:
    stamps = [row[0] for row in query(url, "SELECT fetched_at FROM readings ORDER BY id")]
    assert stamps == sorted(stamps), "a stale writer stored a reading out of time order"
    return stamps


# --------------------------------------------------------------------------- one voice, SIGKILL


def test_three_replicas_call_the_api_once_per_interval_and_a_killed_leader_is_replaced(
        tmp_path: Path, pg_url: str, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli, run_cli: RunCli) -> None:
    fake_api.set_balance(100.0, 95.0)  # "low" fires, then reminds every tick
    replicas = start_replicas(start_cli, tmp_path, 3, fake_api, pg_url, webhook.apprise_url())
    leader = one_leader(replicas, 60)
    standbys = [r for r in replicas if r is not leader]
    assert leader.health() == "ok"
    assert [r.health() for r in standbys] == ["ok standby", "ok standby"]
    assert [r.leading() for r in standbys] == [0.0, 0.0]

    shown = run_cli("status", "--json", config=leader.config, env=ENV)
    assert shown.code == 0, shown
    named = json.loads(shown.stdout)["leader"]
    assert (named["pid"], named["host"]) == (leader.proc.pid, socket.gethostname())
    assert isinstance(named["epoch"], int) and named["since"]
    line = run_cli("status", config=leader.config, env=ENV).stdout
    assert f"pid {leader.proc.pid}, epoch {named['epoch']}" in line

    window = 15.0
    started = time.monotonic()
    time.sleep(window)
    calls = [r for r in fake_api.requests if started <= r.at < started + window]
    assert len(calls) / window <= 1.5, f"{len(calls)} API calls in {window:.0f}s across 3 replicas"

    killed_at = time.monotonic()
    leader.proc.kill()
    leader.proc.wait(10)
    new = one_leader(standbys, BOUND + 10)
    after = wait_until(lambda: [a for a in arrivals(webhook) if a[0] > killed_at], BOUND + 10,
                       "a reminder from the new leader")
    assert after[0][0] - killed_at <= BOUND, f"reminders stopped for {after[0][0] - killed_at:.1f}s"
    wait_until(lambda: len([a for a in arrivals(webhook) if a[0] > killed_at]) >= 3, 20, "more reminders")
    assert [r.health() for r in standbys if r is not new] == ["ok standby"]
    for replica in standbys:
        stop(replica)
    delivered_in_order_once(pg_url, webhook, stopped_leaders=1)


# --------------------------------------------------------------------------- SIGSTOP


def test_a_leader_frozen_past_its_lease_wakes_up_writing_nothing(
        tmp_path: Path, pg_url: str, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli) -> None:
    # A slow API: the leader spends most of each tick inside its fetch, so the freeze lands
    # mid-tick and the woken leader tries to store a reading stamped before the freeze.
    fake_api.set_default(Resp.credits(100.0, 95.0, delay=0.7))
    # send_timeout bounds a send's child process, its start-up included: 2 s was too tight on a
    # loaded CI machine (sends timed out, backed off, and the reminders came too late).
    alerts = 'repeat_interval = "1s"\nsend_timeout = "4s"'
    [first] = start_replicas(start_cli, tmp_path, 1, fake_api, pg_url, webhook.apprise_url(), alerts=alerts)
    assert one_leader([first], 60) is first
    [second] = start_replicas(start_cli, tmp_path, 1, fake_api, pg_url, webhook.apprise_url(), first=1,
                              alerts=alerts)
    assert one_leader([first, second], 60) is first
    webhook.wait_for(2, timeout=20)

    frozen_at = time.monotonic()
    first.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: second.leading() == 1.0, BOUND + 10, "the standby to take over")
        took = time.monotonic() - frozen_at
        assert took <= BOUND, f"the frozen leader was replaced after {took:.1f}s"
        # The frozen leader's claim (if it froze mid-send) lapses after send_timeout + 15 s.
        wait_until(lambda: len([a for a in arrivals(webhook) if a[0] > frozen_at]) >= 3, 60,
                   "reminders from the new leader")
    finally:
        first.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: first.health() == "ok standby", 20, "the woken leader to stand by")
    time.sleep(3)  # it would write and send now, if it could
    assert second.leading() == 1.0
    woken = stop(first)
    stop(second)
    assert "lost the leader lease" in woken or "no longer holds the leader lease" in woken, woken[-3000:]
    assert "IntegrityError" not in woken and "UniqueViolation" not in woken
    delivered_in_order_once(pg_url, webhook, stopped_leaders=1)
    readings_in_time_order(pg_url)


# --------------------------------------------------------------------------- clock skew


needs_faketime = pytest.mark.skipif(not FAKETIME.exists() and not os.environ.get("CI"),
                                    reason="libfaketime is not installed (apt-get install libfaketime)")


@contextlib.contextmanager
def spending(api: FakeOpenRouter, per_second: float) -> Iterator[None]:
    """The account spends `per_second` USD every second while the block runs."""
    done = threading.Event()
    started = time.monotonic()

    def feed() -> None:
        while not done.wait(0.2):
            api.set_balance(10_000.0, round(per_second * (time.monotonic() - started), 4))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield
    finally:
        done.set()
        feeder.join(2)


@needs_faketime
def test_a_replica_whose_clock_is_90s_off_stamps_the_same_history(
        tmp_path: Path, pg_url: str, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli, run_cli: RunCli) -> None:
    # The monotonic clock moves by the same offset (harmless): libfaketime breaks sleeping otherwise.
    skewed = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": "-90s"}
    with spending(fake_api, 0.1):  # $360/h, over the rule's $100/h
        [behind] = start_replicas(start_cli, tmp_path, 1, fake_api, pg_url, webhook.apprise_url(),
                                  env=skewed, rules=BURN, alerts='repeat_interval = "1h"')
        assert one_leader([behind], 60) is behind
        [on_time] = start_replicas(start_cli, tmp_path, 1, fake_api, pg_url, webhook.apprise_url(),
                                   first=1, rules=BURN, alerts='repeat_interval = "1h"')
        assert one_leader([behind, on_time], 60) is behind
        wait_until(lambda: "fast-burn#1/first" in [r for _, r in arrivals(webhook)], 40, "the burn alert")
        [(lag,)] = query(pg_url, "SELECT extract(epoch FROM now() - max(fetched_at)) FROM readings")
        assert float(lag) < 10, f"the skewed leader stamped its reading {float(lag):.0f}s in the past"
        stop(behind)  # hands the lease over at once
        wait_until(lambda: on_time.leading() == 1.0, BOUND, "the on-time replica to take over")
        time.sleep(6)
        status = json.loads(run_cli("status", "--json", config=on_time.config, env=ENV).stdout)
        stop(on_time)
    refs = [r for _, r in arrivals(webhook)]
    assert refs == ["fast-burn#1/first"], refs  # still firing: no resolve, no second first
    assert status["burn_rate_per_hour"] is not None and status["burn_rate_per_hour"] > 100, status
    assert [a["rule"] for a in status["alerts"]] == ["fast-burn"]
    stamps = readings_in_time_order(pg_url)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 30, "the handover left a jump of the skew in the history"


# --------------------------------------------------------------------------- an old database


def test_three_replicas_starting_together_on_an_old_database_migrate_once_and_fold_once(
        tmp_path: Path, pg_url: str, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli) -> None:
    from alembic import command  # lazy: only this case builds an old database

    engine = db.make_engine(pg_url)
    try:
        command.upgrade(db.alembic_config(engine), "0006")  # the release before leases
        old = datetime.now(UTC) - timedelta(days=40)
        with engine.begin() as conn:
            table = db.Base.metadata.tables["readings"]
            conn.execute(insert(table), [{"account": "default", "fetched_at": old + i * timedelta(seconds=1),
                                          "total_credits": 100.0, "total_usage": i / 1000, "timeline": 0}
                                         for i in range(6000)])
    finally:
        engine.dispose()
    fake_api.set_balance(100.0, 20.0)
    replicas = start_replicas(start_cli, tmp_path, 3, fake_api, pg_url, webhook.apprise_url())
    one_leader(replicas, 90)
    wait_until(lambda: query(pg_url, "SELECT count(*) FROM readings WHERE fetched_at < now() - "
                                     "interval '30 days'")[0][0] == 0, 60, "the old readings to be folded")
    time.sleep(2)  # a second fold, if any, would land now
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [(db.HEAD,)]
    assert query(pg_url, "SELECT count(*) FROM leader_lease") == [(1,)]
    [(folded,)] = query(pg_url, "SELECT sum(count) FROM rollups")
    assert folded == 6000, f"rollups count {folded} readings, 6000 were folded"
    for replica in replicas:
        stop(replica)


# --------------------------------------------------------------------------- SQLite


def test_two_replicas_on_one_sqlite_file_elect_one_leader_and_check_still_ticks(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, start_cli: StartCli,
        run_cli: RunCli) -> None:
    fake_api.set_balance(100.0, 95.0)
    database = f"sqlite:///{tmp_path}/cw.db"
    replicas = start_replicas(start_cli, tmp_path, 2, fake_api, database, webhook.apprise_url(),
                              alerts='repeat_interval = "1h"')
    leader = one_leader(replicas, 60)
    standby = next(r for r in replicas if r is not leader)
    assert (leader.health(), standby.health()) == ("ok", "ok standby")
    window = 8.0
    started = time.monotonic()
    time.sleep(window)
    calls = [r for r in fake_api.requests if started <= r.at < started + window]
    assert len(calls) / window <= 1.5, f"{len(calls)} API calls in {window:.0f}s across 2 replicas"
    checked = run_cli("check", config=leader.config, env=ENV)
    assert checked.code == 1 and checked.stdout.startswith("CREDITWATCH WARNING"), checked
    assert leader.leading() == 1.0 and standby.leading() == 0.0
    for replica in replicas:
        stop(replica)
    assert [r for _, r in arrivals(webhook)] == ["low#1/first"]
