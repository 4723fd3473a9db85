"""What every benchmark stands on: the loopback fakes, a settings file, Deps built as the CLI does."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The fakes are the test suite's own loopback servers; the bench reuses them as they are.
sys.path.insert(0, str(REPO / "tests"))

from fakes import FakeOpenRouter, WebhookReceiver  # noqa: E402 - needs the path above

from worker import commands  # noqa: E402
from worker.app import App  # noqa: E402

API_KEY_ENV = "CW_BENCH_API_KEY"
API_KEY = "bench-dummy-key-0123456789"  # checked by the fake; no real service ever sees it
CREDITS = 100_000.0  # far above every threshold in RULES, so nothing fires
BIN = Path(sys.executable).parent  # the venv's bin: `make bench` runs .venv/bin/python

RULES = """
[[rules]]
name = "low-balance"
type = "threshold"
below = 10.0

[[rules]]
name = "low-percent"
type = "threshold"
below_percent = 5

[[rules]]
name = "fast-burn"
type = "burn_rate"
window = "1h"
short_window = "5m"
above = 5.0

[[rules]]
name = "short-runway"
type = "runway"
window = "6h"
below = "24h"

[[rules]]
name = "fetch-failing"
type = "fetch_failure"
consecutive = 3
severity = "critical"
"""


@dataclass(frozen=True)
class Servers:
    api: FakeOpenRouter
    hooks: WebhookReceiver


@contextmanager
def servers() -> Iterator[Servers]:
    """A fake OpenRouter (checking the key) and a webhook receiver, both on 127.0.0.1."""
    with FakeOpenRouter(total_credits=CREDITS, api_key=API_KEY) as api, WebhookReceiver() as hooks:
        yield Servers(api, hooks)


def settings_text(srv: Servers, db_path: Path, *, interval: str = "1m",
                  keep_raw: str | None = None, keep_rollups: str | None = None) -> str:
    """5 rules and 2 json:// channels; retention settings are the defaults unless given."""
    retention = "".join(f'{key} = "{value}"\n' for key, value in
                        (("keep_raw", keep_raw), ("keep_rollups", keep_rollups)) if value)
    return f"""
[openrouter]
base_url = "{srv.api.base_url}"
api_key_env = "{API_KEY_ENV}"
timeout = "5s"

[schedule]
interval = "{interval}"

[database]
url = "sqlite:///{db_path}"
{retention}
[[channels]]
name = "hook-a"
url = "{srv.hooks.apprise_url('a')}"

[[channels]]
name = "hook-b"
url = "{srv.hooks.apprise_url('b')}"
{RULES}"""


def write_settings(folder: Path, text: str, name: str = "settings.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def environ() -> dict[str, str]:
    """This process's environment without the user's own creditwatch variables, plus the dummy key."""
    env = {k: v for k, v in os.environ.items()
           if k != "OPENROUTER_API_KEY" and not k.startswith("CREDITWATCH_")}
    env[API_KEY_ENV] = API_KEY
    return env


def load(config: Path, log_level: str = "WARNING") -> App:
    """The service exactly as every CLI command builds it (worker.app.build; nothing written)."""
    args = argparse.Namespace(config=str(config), log_level=log_level)
    return commands.load(args, environ(), need_key=True)
