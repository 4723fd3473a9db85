"""Ticks with per-key rules (issue 11): two accounts of 2,000 keys each, read page by page
from GET /keys, and whether a long key history changes a tick's cost.

The keys' figures move a little every tick (a few keys spend), as on a busy account, so
each tick writes the keys that changed and evaluates every key against two rules.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from fakes import FakeOpenRouter, key_item  # the test suite's fakes
from sqlalchemy import text

from table import Figure, median
from testbed import BIN, environ, load, write_settings  # noqa: F401 - BIN keeps the venv's python
from worker.tick import run_tick

KEYS, ACCOUNTS = 2_000, ("prod", "dev")
SMALL, LARGE = 1_000, 1_000_000  # key readings stored before the timed ticks
WARMUP, TIMED = 5, 40
START = datetime(2026, 11, 1, tzinfo=UTC)
KEYS_ENV = {"prod": "CW_BENCH_PROD_KEY", "dev": "CW_BENCH_DEV_KEY"}
TOKENS = {"prod": "bench-prod-key-0123456789", "dev": "bench-dev-key-0123456789"}


def _settings(folder: Path, api: FakeOpenRouter, name: str) -> Path:
    return write_settings(folder, f"""
[openrouter]
base_url = "{api.base_url}"
timeout = "10s"

[database]
url = "sqlite:///{folder / name}.db"
keep_raw = "700d"

[[accounts]]
name = "prod"
api_key_env = "{KEYS_ENV['prod']}"

[[accounts]]
name = "dev"
api_key_env = "{KEYS_ENV['dev']}"

[[rules]]
name = "key-near-limit"
type = "key_limit"
below_percent = 1

[[rules]]
name = "key-spend"
type = "key_spend"
period = "day"
above = 1000000.0
""", f"{name}.toml")


def _keys(account: str) -> list[dict[str, object]]:
    return [key_item(f"{account}-key-{i}", limit=1000.0, usage_daily=float(i % 7)) for i in range(KEYS)]


@dataclass
class Timings:
    bare: list[float]
    small: list[float]
    large: list[float]


def measure(folder: Path) -> Timings:
    env = {**environ(), **{KEYS_ENV[a]: TOKENS[a] for a in ACCOUNTS}}
    with FakeOpenRouter() as api:
        accounts = {a: api.add_account(TOKENS[a], 10_000.0, 1.0, keys=_keys(a)) for a in ACCOUNTS}
        beds = []
        for name, history in (("small", SMALL), ("large", LARGE)):
            app = load_with(_settings(folder, api, name), env)
            app.migrate()
            _seed_key_readings(app.engine, history)
            beds.append(app)
        rng = random.Random(11)
        timings = Timings([], [], [])
        tick_no = 0

        def spend() -> None:
            for account in accounts.values():  # a few keys spend a little every tick
                items = account.keys
                for item in rng.sample(items, 20):
                    item["usage_daily"] = float(item["usage_daily"]) + 0.01  # type: ignore[arg-type]
                account.set_keys(items)

        for round_no in range(WARMUP + TIMED):
            spend()
            now = START + timedelta(minutes=tick_no)
            tick_no += 1
            bare = _bare(api)
            small = _tick(beds[0], now)
            large = _tick(beds[1], now)
            if round_no >= WARMUP:
                timings.bare.append(bare)
                timings.small.append(small)
                timings.large.append(large)
        for app in beds:
            app.close()
    return timings


def load_with(config: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    import argparse

    from worker import commands

    return commands.load(argparse.Namespace(config=str(config), log_level="WARNING"), env, need_key=True)


def _seed_key_readings(engine, count: int) -> None:  # type: ignore[no-untyped-def]
    """`count` key readings in the past, spread over the accounts' keys."""
    rows = ({"account": ACCOUNTS[i % 2], "key_id": f"{i % KEYS:016x}", "fetched_at": START - timedelta(
        seconds=count - i), "limit": 1000.0, "limit_remaining": 990.0, "usage": 10.0, "usage_daily": 1.0,
        "usage_weekly": 1.0, "usage_monthly": 1.0} for i in range(count))
    with engine.begin() as conn:
        batch: list[dict[str, object]] = []
        for row in rows:
            batch.append({**row, "fetched_at": row["fetched_at"].strftime("%Y-%m-%d %H:%M:%S.%f")})
            if len(batch) == 10_000:
                _insert(conn, batch)
                batch = []
        if batch:
            _insert(conn, batch)


def _insert(conn, batch: list[dict[str, object]]) -> None:  # type: ignore[no-untyped-def]
    conn.execute(text("INSERT INTO key_readings (account, key_id, fetched_at, \"limit\", limit_remaining, "
                      "usage, usage_daily, usage_weekly, usage_monthly) VALUES (:account, :key_id, "
                      ":fetched_at, :limit, :limit_remaining, :usage, :usage_daily, :usage_weekly, "
                      ":usage_monthly)"), batch)


def _bare(api: FakeOpenRouter) -> float:
    """The HTTP alone: each account's /credits and every /keys page, with a plain session."""
    started = time.perf_counter()
    with requests.Session() as session:
        for account in ACCOUNTS:
            headers = {"Authorization": f"Bearer {TOKENS[account]}"}
            session.get(f"{api.base_url}/credits", headers=headers, timeout=10).json()
            for page in range(KEYS // 100 + 1):
                session.get(f"{api.base_url}/keys", params={"offset": str(page * 100)}, headers=headers,
                            timeout=10).json()
    return time.perf_counter() - started


def _tick(app, now: datetime) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    report = run_tick(app.deps, now)
    elapsed = time.perf_counter() - started
    if not all(a.read_ok for a in report.accounts) or report.firing:
        msg = f"the keys tick was meant to read everything and fire nothing: {report}"
        raise RuntimeError(msg)
    return elapsed


def figures(t: Timings) -> list[Figure]:
    bare, small, large = median(t.bare), median(t.small), median(t.large)
    return [
        Figure(f"tick with {len(ACCOUNTS)} accounts x {KEYS:,} keys (paged) minus the bare HTTP",
               (small - bare) * 1000, 30.0, "ms", len(t.small),
               f"tick median {small * 1000:.1f} ms, the same {2 * (1 + KEYS // 100 + 1)} GETs with a plain "
               f"session {bare * 1000:.1f} ms; 2 per-key rules, 20 keys of each account change a tick."),
        Figure(f"keys tick with {LARGE:,} / with {SMALL:,} key readings stored", large / small, 1.25, "x",
               len(t.large), f"tick medians {large * 1000:.1f} ms vs {small * 1000:.1f} ms."),
    ]
