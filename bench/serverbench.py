"""What `[server] listen` costs (issue 10): the tick with the server against the tick without,
a `/metrics` scrape while `run` ticks, and `run`'s memory with its server answering."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from procfs import tree_rss_kb
from table import MB, Figure, median
from testbed import BIN, Servers, environ, load, settings_text, write_settings
from worker.runner import Runner

WARMUP, TIMED = 20, 200  # in-process ticks per variant
SCRAPE_SECONDS = 20.0  # scraping `run` (interval 1s) this long, every 50 ms
RSS_TARGET_MB = 75.0  # the delivery issue's 70 MB plus 5


@dataclass(frozen=True)
class Measured:
    plain_ms: list[float]
    served_ms: list[float]
    scrape_ms: list[float]
    ticks_seen: int
    rss_mb: float | None
    note: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(folder: Path, srv: Servers, name: str, listen: str | None, interval: str = "1m") -> Path:
    text = settings_text(srv, folder / f"{name}.db", interval=interval)
    if listen is not None:
        text = f'[server]\nlisten = "{listen}"\n' + text
    return write_settings(folder, text, f"{name}.toml")


def tick_overhead(folder: Path, srv: Servers) -> tuple[list[float], list[float]]:
    """In-process `Runner.tick` medians, without and with the server (alternating, so drift
    in the machine's load hits both alike). The served runner's server is scraped by nobody:
    this is what the server itself adds (its thread, the metrics and the status page's
    bookkeeping after each tick)."""
    runners = []
    for name, listen in (("plain", None), ("served", f"127.0.0.1:{free_port()}")):
        app = load(_config(folder, srv, name, listen))
        app.migrate()
        runner = Runner(app)
        runner.start()
        runners.append(runner)
    samples: list[list[float]] = [[], []]
    try:
        for _ in range(WARMUP):
            for runner in runners:
                runner.tick()
        for i in range(TIMED):
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for which in order:
                started = time.perf_counter()
                runners[which].tick()
                samples[which].append((time.perf_counter() - started) * 1000)
    finally:
        for runner in runners:
            runner.close()
            runner.app.close()
    return samples[0], samples[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def scrape_while_ticking(folder: Path, srv: Servers) -> tuple[list[float], int, float | None, str]:
    """`creditwatch run` (interval 1s) with its server; /metrics every 50 ms for
    SCRAPE_SECONDS; then the process tree's resident memory."""
    port = free_port()
    config = _config(folder, srv, "service", f"127.0.0.1:{port}", interval="1s")
    log = folder / "service.log"
    samples: list[float] = []
    ticks = 0
    rss: float | None = None
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "creditwatch"), "--config", str(config), "run"], env=environ(),
                                cwd=folder, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:  # up, and its first tick has read the balance
                    if b"creditwatch_remaining_usd " in _get(port, "/metrics")[1]:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            else:
                return [], 0, None, f"`run` never showed a balance in /metrics; its log: {log}"
            end = time.monotonic() + SCRAPE_SECONDS
            while time.monotonic() < end:
                started = time.perf_counter()
                status, body = _get(port, "/metrics")
                samples.append((time.perf_counter() - started) * 1000)
                if status != 200 or b"creditwatch_remaining_usd" not in body:
                    return samples, 0, None, f"/metrics answered {status} without the balance"
                time.sleep(0.05)
            body = _get(port, "/metrics")[1].decode()
            ticks = int(sum(float(line.split()[-1]) for line in body.splitlines()
                            if line.startswith("creditwatch_tick_duration_seconds_count")))
            rss = tree_rss_kb(proc.pid) * 1024 / MB
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return samples, ticks, rss, f"exit code {code} on SIGTERM (0 expected)"


def measure(folder: Path, srv: Servers) -> Measured:
    plain, served = tick_overhead(folder, srv)
    scrapes, ticks, rss, note = scrape_while_ticking(folder, srv)
    return Measured(plain, served, scrapes, ticks, rss, note)


def figures(m: Measured) -> list[Figure]:
    added = median(m.served_ms) - median(m.plain_ms) if m.plain_ms and m.served_ms else None
    scrape = median(m.scrape_ms) if m.scrape_ms else None
    ordered = sorted(m.scrape_ms)
    tail = (f"p95 {ordered[int(len(ordered) * 0.95)]:.2f} ms, max {ordered[-1]:.2f} ms"
            if ordered else "no samples")
    return [
        Figure("tick with `[server] listen` minus the tick without (in-process Runner.tick)", added, 1.0,
               "ms", TIMED,
               f"medians {median(m.served_ms):.2f} ms with the server, {median(m.plain_ms):.2f} ms without, "
               f"alternating, SQLite, 5 rules, 2 channels, nothing sent" if added is not None else ""),
        Figure("`/metrics` scrape while `creditwatch run` ticks every 1s", scrape, 20.0, "ms",
               len(m.scrape_ms), f"{tail}; one scrape every 50 ms for {SCRAPE_SECONDS:.0f} s over "
               f"{m.ticks_seen} ticks; a new connection each"),
        Figure("resident memory of `creditwatch run` with its server, after the scrapes", m.rss_mb,
               RSS_TARGET_MB, "MB", 1, f"VmRSS of the process tree; {m.note}"),
    ]


if __name__ == "__main__":  # pragma: no cover - a quick look at one part
    import tempfile

    from testbed import servers

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryDirectory() as tmp, servers() as srv:
        for figure in figures(measure(Path(tmp), srv)):
            print(figure)
