"""Fault injection: `creditwatch check` killed with SIGKILL at random points of its tick.

Thirty ticks in a row die at a seeded random moment spread over a normal tick's
duration (start-up, migration check, fetch, the write transaction, delivery).
A final unkilled `check`, run at once (a claim whose holder died on this host is
taken over without waiting for its lease), must then leave the database and the
webhook receiver in a state that no crash can explain away: every served answer stored once or not at all, alert states
whole, every transition's outbox row present and delivered, and every message
received at least once and never more often than it was claimed (its `ref:`
line identifies it), no more duplicates than kills, and never out of order: a
"resolved" never before its "first", a message never before an older one.
"""

from __future__ import annotations

import contextlib
import random
import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_argv, cli_env
from fakes import FakeOpenRouter, Resp, WebhookReceiver, write_settings

KEY = "sk-or-v1-faults-kill-0001"
SEED = 20261125
KILLS = 30
MAX_SPAWNS = 60  # a spawn that finishes before its kill time is retried, within reason
RULE = "low"
REF = re.compile(r"^ref: (\S+)$", re.MULTILINE)
KEY_RE = re.compile(r"^(?P<rule>[^#]+)#(?P<period>\d+)/(?P<what>first|resolved|repeat-(?P<n>\d+))$")


def _script(n: int) -> list[float]:
    """total_usage per answer: three low-balance answers, then two healthy ones, over and over.

    Each value is distinct (+ i/1000), so a stored reading names exactly one answer.
    """
    return [(92.0 if i % 5 < 3 else 70.0) + i / 1000 for i in range(n)]


def _settings(tmp_path: Path, api: FakeOpenRouter, hook: WebhookReceiver) -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "5s"

        [database]
        url = "sqlite:///{tmp_path}/cw.db"

        [alerts]
        repeat_interval = "1s"

        [[channels]]
        name = "hook"
        url = "{hook.apprise_url()}"

        [[rules]]
        name = "{RULE}"
        type = "threshold"
        below = 10.0
    """)


class _Spawner:
    """Starts `python -m worker check`, output to numbered files for post-mortems."""

    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.tmp_path, self.config, self.n = tmp_path, config, 0

    def __call__(self) -> subprocess.Popen[bytes]:
        self.n += 1
        out = (self.tmp_path / f"check-{self.n}.log").open("wb")
        with out:
            return subprocess.Popen(cli_argv(("check",), self.config),
                                    env=cli_env({"OPENROUTER_API_KEY": KEY}),
                                    cwd=self.tmp_path, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)


def _timed_check(spawn: Callable[[], subprocess.Popen[bytes]]) -> tuple[int, float, float]:
    """Run one tick to the end: its exit code, duration, and when it started."""
    started = time.monotonic()
    proc = spawn()
    code = proc.wait(60)
    return code, time.monotonic() - started, started


def _rows(db: Path, query: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(query))


def _utc(text: str) -> datetime:
    # SQLAlchemy stores naive UTC text on SQLite (see worker.db.UTCDateTime).
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _check_alert_states(db: Path) -> dict[str, sqlite3.Row]:
    states = {r["rule"]: r for r in _rows(db, "SELECT * FROM alert_states")}
    for rule, row in states.items():
        assert row["status"] in ("inactive", "pending", "firing"), dict(row)
        if row["status"] == "firing":
            assert row["firing_since"] is not None and row["last_sent_at"] is not None, dict(row)
            assert row["period"] >= 1, dict(row)
        else:
            assert row["firing_since"] is None, dict(row)
        if row["status"] == "pending":
            assert row["pending_since"] is not None, dict(row)
        assert row["period"] >= 0 and row["repeats"] >= 0, (rule, dict(row))
    return states


def _check_transitions(states: dict[str, sqlite3.Row], outbox: list[sqlite3.Row]) -> None:
    """Every period up to state.period has its FIRST (and RESOLVED once over), nothing beyond."""
    by_rule: dict[str, list[re.Match[str]]] = {}
    for row in outbox:
        match = KEY_RE.match(row["key"])
        assert match, row["key"]
        assert match["rule"] == row["rule"], dict(row)
        by_rule.setdefault(row["rule"], []).append(match)
    assert set(by_rule) <= set(states), (set(by_rule), set(states))
    for rule, state in states.items():
        period, status = state["period"], state["status"]
        keys = by_rule.get(rule, [])
        firsts = {int(m["period"]) for m in keys if m["what"] == "first"}
        resolved = {int(m["period"]) for m in keys if m["what"] == "resolved"}
        assert firsts == set(range(1, period + 1)), (rule, period, sorted(firsts))
        closed = period if status != "firing" else period - 1
        assert resolved == set(range(1, closed + 1)), (rule, period, status, sorted(resolved))
        repeats: dict[int, set[int]] = {}
        for m in keys:
            if m["n"] is not None:
                repeats.setdefault(int(m["period"]), set()).add(int(m["n"]))
        for p, numbers in repeats.items():
            assert 1 <= p <= period, (rule, p, period)
            assert numbers == set(range(1, max(numbers) + 1)), (rule, p, sorted(numbers))
        if period:
            assert repeats.get(period, set()) == set(range(1, state["repeats"] + 1)), (
                rule, period, state["repeats"], sorted(repeats.get(period, set())))


@pytest.mark.slow
def test_sigkill_at_random_points_of_a_tick_loses_and_half_writes_nothing(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        record_property: Callable[[str, Any], None]) -> None:
    rng = random.Random(SEED)
    usages = _script(400)
    index_of = {u: i for i, u in enumerate(usages)}
    fake_api.enqueue(*(Resp.credits(100.0, u, delay=rng.uniform(0.05, 0.2)) for u in usages))
    fake_api.set_default(Resp.json({"error": "script exhausted"}, status=500))
    webhook.set_hang(0.05)  # a receiver that takes a moment widens the send-to-mark window
    db = tmp_path / "cw.db"
    spawn = _Spawner(tmp_path, _settings(tmp_path, fake_api, webhook))

    # A normal tick, measured after the first one (which also creates the schema).
    first_code, _, _ = _timed_check(spawn)
    code, tick, started = _timed_check(spawn)
    assert first_code in (0, 1) and code in (0, 1), (first_code, code)
    fetch_at = fake_api.requests[-1].at - started  # the fetch's offset inside a tick

    # Kill points: a third anywhere in a tick (mostly interpreter start-up), two thirds
    # in what follows the fetch's arrival at the API (the answer, the write transaction,
    # delivery), where a crash could half-write something. Timed from the arrival,
    # so start-up jitter on a busy machine does not shift them.
    rest = tick - fetch_at
    kills = finished = 0
    loop_started = time.monotonic()
    while kills < KILLS and spawn.n < MAX_SPAWNS:
        anywhere = rng.random() < 1 / 3
        delay = rng.uniform(0.0, tick if anywhere else rest)
        seen = fake_api.count
        started = time.monotonic()
        proc = spawn()
        if not anywhere:
            with contextlib.suppress(TimeoutError):
                fake_api.wait_for_requests(seen + 1, timeout=10)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        else:
            # The machine got faster than when we measured: shrink the estimate with it.
            finished += 1
            if anywhere:
                tick = min(tick, 0.9 * (time.monotonic() - started))
            else:
                rest *= 0.9
        proc.wait(30)
    assert kills == KILLS, f"only {kills} of {spawn.n} ticks were still running at their kill time"

    loop_s = time.monotonic() - loop_started
    orphaned = len(_rows(db, "SELECT id FROM outbox WHERE status = 'sending'"))
    # No waiting for leases: a claim whose holder died on this host is taken over at once.
    time.sleep(1.0)  # a killed check's sender child finishes its one send and exits
    code, _, _ = _timed_check(spawn)
    assert code in (0, 1), (spawn.tmp_path / f"check-{spawn.n}.log").read_text()

    # Readings: each served answer stored once or not at all, in the order it was served.
    served = usages[: fake_api.count]
    assert fake_api.pending == len(usages) - fake_api.count, "an answer was served twice"
    readings = _rows(db, "SELECT total_credits, total_usage FROM readings ORDER BY id")
    stored = [r["total_usage"] for r in readings]
    assert len(stored) == len(set(stored)), Counter(stored).most_common(3)
    assert set(stored) <= set(served), sorted(set(stored) - set(served))
    order = [index_of[u] for u in stored]
    assert order == sorted(order), order
    attempts = _rows(db, "SELECT kind FROM fetch_attempts")
    assert [a["kind"] for a in attempts] == ["ok"] * len(stored), "attempt without its reading"

    # Alert state and outbox agree: no transition without its message, none half-written.
    states = _check_alert_states(db)
    outbox = _rows(db, "SELECT * FROM outbox ORDER BY id")
    _check_transitions(states, outbox)
    assert states[RULE]["period"] >= 2, "the script should have fired the alert repeatedly"
    assert [r["status"] for r in outbox] == ["delivered"] * len(outbox), Counter(
        r["status"] for r in outbox)

    # The receiver: every message at least once, nothing unknown, and no send without a
    # claim of its own (n <= attempts). A kill between a channel's acceptance and its
    # record adds at most one copy, so there are never more duplicates than kills.
    arrivals = [ref for m in webhook.messages for ref in REF.findall(str(m["message"]))]
    received = Counter(arrivals)
    claims = {r["key"]: r["attempts"] for r in outbox}
    missing = [k for k in claims if received[k] == 0]
    assert not missing, missing
    assert set(received) <= set(claims), set(received) - set(claims)
    unclaimed = {k: (n, claims[k]) for k, n in received.items() if n > claims[k]}
    assert not unclaimed, f"sent more often than claimed: {unclaimed}"
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= kills, (duplicates, kills)
    keys = list(claims)
    # Order: a message never arrives while an older one of the channel is undelivered, so
    # arrivals (copies included) never go back in the outbox's order, and every "resolved"
    # comes after the "first" it resolves.
    position = {key: i for i, key in enumerate(keys)}
    sequence = [position[ref] for ref in arrivals]
    backwards = [(arrivals[i - 1], arrivals[i]) for i in range(1, len(sequence))
                 if sequence[i] < sequence[i - 1]]
    assert not backwards, f"arrived out of order: {backwards[:5]}"

    figures = {
        "kills": kills, "kill_loop_s": round(loop_s, 1), "spawns": spawn.n, "finished_before_kill": finished,
        "normal_tick_s": round(tick, 3), "fetch_at_s": round(fetch_at, 3),
        "after_fetch_s": round(rest, 3), "answers_served": len(served),
        "readings_stored": len(stored), "messages": len(keys),
        "webhook_posts_accepted": sum(received.values()), "duplicates": duplicates,
        "max_arrivals": max(received.values(), default=0),
        "messages_thrice": sum(1 for n in received.values() if n > 2),
        "claims_taken_over": sum(n - 1 for n in claims.values()),
        "orphaned_claims_at_end": orphaned,
        "alert_periods": states[RULE]["period"],
    }
    for name, value in figures.items():
        record_property(name, value)
    print("\nkill-test figures: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
