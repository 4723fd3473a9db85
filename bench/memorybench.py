"""Resident memory of the `run` service after 10,000 ticks, and its growth from tick 1,000."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from table import MB, Figure
from testbed import Servers, environ, settings_text, write_settings

CHILD = Path(__file__).with_name("servechild.py")
FIRST, LAST = 1_000, 10_000
INTERVAL = "5m"  # the virtual clock's step: 10,000 ticks are 34.7 days, so retention folds too
DEADLINE = 420.0  # seconds: a child slower than this is reported, not waited for


@dataclass(frozen=True)
class Measured:
    rss_kb: dict[int, int]
    hwm_kb: int
    seconds: float
    exit_code: int | None
    interval_ms: int


def measure(folder: Path, srv: Servers, interval_ms: int) -> Measured:
    """Run the child to tick LAST, then SIGTERM it as an operator would."""
    config = write_settings(folder, settings_text(srv, folder / "service.db", interval=INTERVAL),
                            "service.toml")
    out = folder / "rss.json"
    argv = [sys.executable, str(CHILD), str(config), str(out), str(interval_ms), str(LAST)]
    code: int | None = None
    with (folder / "service.log").open("w", encoding="utf-8") as log:
        child = subprocess.Popen(argv, env=environ(), cwd=folder, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log)
        try:
            done = _wait_for(out, child)
            child.send_signal(signal.SIGTERM)
            code = child.wait(60)
        finally:
            if child.poll() is None:  # it ignored SIGTERM, or the bench itself failed
                child.kill()
                child.wait()
    if not done:
        return Measured({}, 0, DEADLINE, code, interval_ms)
    data = json.loads(out.read_text(encoding="utf-8"))
    rss = {int(k): v for k, v in data["rss_kb"].items()}
    return Measured(rss, data["hwm_kb"], data["seconds"], code, interval_ms)


def _wait_for(out: Path, child: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if out.exists():
            return True
        if child.poll() is not None:
            return False  # it died early; its log (in the temp dir) said why
        time.sleep(0.2)
    return False


def figures(m: Measured) -> list[Figure]:
    last, first = m.rss_kb.get(LAST), m.rss_kb.get(FIRST)
    rss = last * 1024 / MB if last else None
    growth = (last - first) * 1024 / MB if last and first else None
    trail = ", ".join(f"{t:,}: {kb * 1024 / MB:.1f}" for t, kb in sorted(m.rss_kb.items()))
    path = (f"the same code path as `creditwatch run` (commands.load, App.migrate_in_child, App.tick, "
            f"service.serve) with a {m.interval_ms} ms interval instead of schedule.interval and a "
            f"clock stepping {INTERVAL} a tick; {m.seconds:.0f} s for {LAST:,} ticks; exit code "
            f"{m.exit_code} on SIGTERM (0 expected)")
    return [
        Figure(f"resident memory of `creditwatch run` (process tree) between deliveries, after "
               f"{LAST:,} ticks", rss, 70.0, "MB", 1,
               f"VmRSS of the process and its children, {path}; peak (VmHWM) of the process "
               f"{m.hwm_kb * 1024 / MB:.1f} MB."),
        Figure(f"resident memory growth, tick {FIRST:,} -> {LAST:,}", growth, 2.0, "MB", 1,
               f"VmRSS in MB by tick: {trail}."),
    ]
