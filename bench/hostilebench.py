"""`creditwatch run` against hostile peers (issue 8): how long it takes to stop with a stuck
channel, and whether its threads stay flat over 100 ticks against a trickling API."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fakes import FakeOpenRouter, RecordedRequest, Resp, WebhookReceiver  # the test suite's fakes
from hostile import RawServer

from table import Figure, median
from testbed import BIN, environ, write_settings

SEND_TIMEOUT = 10.0  # alerts.send_timeout's default: the bound is send_timeout + 5 s
STOP_RUNS = 3
TICKS = 100


class _Trickling(WebhookReceiver):
    """Accepts each message, then answers one byte every half second for ever."""

    def _decide(self, request: RecordedRequest) -> Resp:
        super()._decide(request)
        return Resp.json({"ok": True, "padding": "x" * 50_000}, trickle=0.5)


def _settings(folder: Path, api: FakeOpenRouter | RawServer, channel: str, *, timeout: str,
              name: str) -> Path:
    return write_settings(folder, f"""
[openrouter]
base_url = "{api.base_url}"
api_key_env = "CW_BENCH_API_KEY"
timeout = "{timeout}"

[schedule]
interval = "1s"

[database]
url = "sqlite:///{folder / name}.db"

[alerts]
repeat_interval = "1s"

[[channels]]
name = "stuck"
url = "{channel}"

[[rules]]
name = "low"
type = "threshold"
below = 10.0
""", f"{name}.toml")


@contextmanager
def _service(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "creditwatch"), "--config", str(config), "run"],
                                env=environ(), cwd=config.parent, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def stop_times(folder: Path) -> list[float]:
    """Seconds from SIGTERM to exit while the only channel's send trickles (STOP_RUNS runs)."""
    from testbed import API_KEY

    samples = []
    for run in range(STOP_RUNS):
        with FakeOpenRouter(total_credits=100.0, total_usage=95.0, api_key=API_KEY) as api, \
                _Trickling() as stuck:
            config = _settings(folder, api, stuck.apprise_url(), timeout="5s", name=f"stop{run}")
            with _service(config, folder / f"stop{run}.log") as proc:
                stuck.wait_for_requests(1, timeout=60)  # the send is under way, and stuck
                time.sleep(1.0)
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)
                samples.append(time.monotonic() - started)
    return samples


@dataclass(frozen=True)
class Threads:
    early: int  # the most threads seen over ticks 5-20
    late: int  # the most threads seen over ticks 85-100
    seconds: float


def threads_over_ticks(folder: Path) -> Threads:
    """`run` against an API that trickles its headers and a channel that trickles its answer."""
    from hostile import trickle_headers

    started = time.monotonic()
    with RawServer(trickle_headers(0.5)) as api, _Trickling() as stuck:
        config = _settings(folder, api, stuck.apprise_url(), timeout="1s", name="threads")
        log = folder / "threads.log"
        with _service(config, log) as proc:
            seen: dict[int, int] = {}
            while True:
                ticks = log.read_bytes().count(b"creditwatch: tick ")
                if ticks > TICKS or proc.poll() is not None:
                    break
                seen[ticks] = max(seen.get(ticks, 0), _threads(proc.pid))
                time.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    early = max((n for t, n in seen.items() if 5 <= t <= 20), default=0)
    late = max((n for t, n in seen.items() if TICKS - 15 <= t <= TICKS), default=0)
    return Threads(early, late, time.monotonic() - started)


def _threads(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/task").iterdir()))
    except OSError:
        return 0


def figures(stops: list[float], threads: Threads) -> list[Figure]:
    return [
        Figure("`creditwatch run`: exit after SIGTERM with a stuck channel", median(stops),
               SEND_TIMEOUT + 5, "s", len(stops),
               f"the channel's receiver accepts, then answers one byte every 0.5 s for ever; "
               f"send_timeout {SEND_TIMEOUT:g} s; runs: {', '.join(f'{s:.1f}' for s in stops)} s."),
        Figure(f"`creditwatch run`: thread growth over {TICKS} ticks, trickling API and stuck channel",
               float(threads.late - threads.early), 0.0, "threads", 1,
               f"most threads over ticks 5-20: {threads.early}, over ticks {TICKS - 15}-{TICKS}: "
               f"{threads.late}; the API sends a header byte every 0.5 s (timeout 1 s), the channel "
               f"trickles its answer; {threads.seconds:.0f} s."),
    ]
