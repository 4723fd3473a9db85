"""`creditwatch demo`: the real service against a simulated account, in this process.

What runs is what `creditwatch run` runs: `worker.app.build`, the Runner (its server with the
status page) and the scheduler of `worker.service`, ticking every second. Only the outside
world is simulated, on loopback (`worker.demoapi`): an OpenRouter account that plays a
scripted story (a steady spend, a burst, a stretch below the line, an outage, a top-up) and
a `json://` channel whose notifications are printed here as they arrive. The database is an
SQLite file in a temporary folder, removed at the end; the API key is a dummy one made up
here. Nothing leaves 127.0.0.1.

The demo stops itself the way an operator stops `run`, with SIGTERM, once every alert that
fired has resolved and a reminder has gone out (or after TIME_LIMIT seconds).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from worker import logs
from worker.app import build
from worker.demoapi import Account, Beat, DemoWorld, story
from worker.redact import Redactor
from worker.runner import Runner
from worker.settings import Settings, parse_settings

KEY_VARIABLE = "CREDITWATCH_DEMO_KEY"
TIME_LIMIT = 170.0  # seconds: the contract's 3 minutes, less the start and the clean-up
INTERVAL = "1s"
_REF = re.compile(r"^ref: (\S+)/(first|repeat-\d+|resolved)\s*$", re.MULTILINE)
_KIND = {"first": "firing", "resolved": "resolved"}


def demo_settings(world: DemoWorld, folder: Path, listen: str) -> str:
    """The demo's settings file: the story's API, a throwaway SQLite file, the page on `listen`,
    the printing channel, and rules that the story trips within about a minute."""
    return f"""
[openrouter]
base_url = "{world.base_url}"
api_key_env = "{KEY_VARIABLE}"
timeout = "2s"

[schedule]
interval = "{INTERVAL}"

[database]
url = "sqlite:///{folder / 'demo.db'}"
timeout = "5s"

[server]
listen = "{listen}"

[alerts]
repeat_interval = "10s"
send_timeout = "5s"

[forecast]
window = "10s"

[[channels]]
name = "terminal"
url = "{world.channel_url}"

[[rules]]
name = "low-balance"
type = "threshold"
below = 15.0
clear_above = 20.0
severity = "critical"

[[rules]]
name = "fast-burn"
type = "burn_rate"
window = "6s"
above = 1800.0

[[rules]]
name = "fetch-failing"
type = "fetch_failure"
consecutive = 3
severity = "critical"

[[rules]]
name = "ci-key-near-limit"
type = "key_limit"
below_percent = 10
keys = ["ci-*"]
"""


class Narrator:
    """Prints the story's chapters and every notification the channel receives, and tells when
    the story is complete: it ended, a reminder went out, and every alert that fired resolved."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.fired: set[str] = set()
        self.resolved: set[str] = set()
        self.reminders = 0
        self.notifications = 0
        self.account: Account | None = None
        self._complete = False

    def say(self, text: str) -> None:
        with self._lock:
            self._write(text)

    def chapter(self, text: str) -> None:
        self.say(f"story: {text}")

    def message(self, title: str, body: str, _notify_type: str) -> None:
        refs = _REF.findall(body)
        kinds = sorted({_KIND.get(suffix, "reminder") for _, suffix in refs}) or ["message"]
        with self._lock:
            self.notifications += 1
            for alert, suffix in refs:
                if suffix == "first":
                    self.fired.add(alert)
                elif suffix == "resolved":
                    self.resolved.add(alert)
                else:
                    self.reminders += 1
            lines = [f"notification ({', '.join(kinds)}): {title}",
                     *(f"    {line}" for line in body.splitlines())]
            self._write("\n".join(lines))

    @property
    def complete(self) -> bool:
        """The story ended, a reminder went out, and every alert that fired has resolved."""
        with self._lock:
            ended = self.account is not None and self.account.finished
            self._complete = self._complete or (ended and self.reminders > 0 and bool(self.fired)
                                                and self.fired <= self.resolved)
            return self._complete

    def wait(self, timeout: float) -> bool:
        """Whether the story completed within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.complete:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        return True

    def _write(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self._started:5.1f}s] "
        self._out.write(stamp + text.replace("\n", "\n" + " " * len(stamp)) + "\n")
        self._out.flush()


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the page binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_demo(out: TextIO, log_level: str, environ: Mapping[str, str], *, time_limit: float = TIME_LIMIT,
             beats: list[Beat] | None = None) -> int:
    """Play the story through the real service; 0 when it completed, 1 when the time limit
    stopped it first, 130 when interrupted."""
    key = f"sk-or-v1-demo-{secrets.token_hex(16)}"  # made up here: the simulated API accepts only it
    narrator = Narrator(out)
    account = Account(beats if beats is not None else story(), narrator.chapter)
    narrator.account = account
    world = DemoWorld(key, account, narrator.message).start()
    try:
        with tempfile.TemporaryDirectory(prefix="creditwatch-demo-") as folder:
            listen = f"127.0.0.1:{free_port()}"
            settings = parse_settings(demo_settings(world, Path(folder), listen), environ)
            return _serve(settings, {**environ, KEY_VARIABLE: key}, narrator, log_level, time_limit)
    finally:
        world.close()


def _serve(settings: Settings, environ: Mapping[str, str], narrator: Narrator, log_level: str,
           time_limit: float) -> int:
    from worker.service import serve  # lazy, as in `run`: APScheduler is needed here alone

    redact = Redactor()
    logs.setup(log_level, redact, settings.logging.format)
    app = build(settings, environ, redact=redact, need_key=True, inspect_in_child=True)
    app.migrate_in_child()
    runner = Runner(app)
    runner.start()
    _banner(narrator, settings)
    started = time.monotonic()
    ended = threading.Event()
    outcome: list[str] = []

    def stop_when_told() -> None:
        outcome.append("complete" if narrator.wait(time_limit) else "time")
        if not ended.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # the way an operator stops `run`

    threading.Thread(target=stop_when_told, daemon=True, name="cw-demo-stop").start()

    def stop() -> None:
        app.deps.outbox.request_stop()
        runner.stopped()

    try:
        serve(runner.tick, settings.schedule.interval, app.worst_tick_seconds, stop)
    finally:
        ended.set()
        runner.close()
        app.close()
    return _verdict(narrator, outcome, time.monotonic() - started)


def _banner(narrator: Narrator, settings: Settings) -> None:
    rules = ", ".join(r.name for r in settings.rules)
    narrator.say(
        "creditwatch demo: the real service watches a simulated OpenRouter account on 127.0.0.1, every "
        f"{INTERVAL}; its story (a steady spend, a burst, an outage, a top-up) takes about a minute.\n"
        f"status page: http://{settings.server.listen}/  (open it in a browser; it reloads itself)\n"
        f"rules: {rules}; notifications print below as the channel receives them, the log goes to stderr; "
        "the database is a temporary file, removed at the end. Ctrl-C stops the demo.")


def _verdict(narrator: Narrator, outcome: list[str], seconds: float) -> int:
    summary = (f"{narrator.notifications} notifications: {len(narrator.fired)} alerts fired, "
               f"{narrator.reminders} reminders, {len(narrator.resolved)} resolved")
    if narrator.complete:
        narrator.say(f"demo complete in {seconds:.0f}s: {summary}. Temporary database removed.")
        return 0
    if outcome == ["time"]:
        narrator.say(f"demo stopped after {seconds:.0f}s before its story completed: {summary}.")
        return 1
    narrator.say(f"demo interrupted after {seconds:.0f}s: {summary}.")
    return 130

