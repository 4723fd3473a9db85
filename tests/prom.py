"""Real Prometheus tools for tests: `promtool check metrics`, and a Prometheus server that
scrapes loopback targets every second.

Both come from Debian's `prometheus` package (.ci/run installs it when promtool is
missing). `Prometheus` runs /usr/bin/prometheus on a free loopback port with a temporary
config and storage directory; its targets live in a file_sd file, so one server (one per
test module, started by a module-scoped fixture: it takes a few seconds) can scrape a
different target in every test. Nothing here patches anything: the server scrapes over
real sockets and is asked through its real HTTP API.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from fakes import LOOPBACK

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
MISSING = ("promtool/prometheus not found: install Debian's `prometheus` package "
           "(`apt-get install -y prometheus`; .ci/run does it when promtool is missing)")
JOB = "creditwatch"
SCRAPE_INTERVAL = "1s"
START_TIMEOUT = 60.0  # seconds for the server to say it is ready (a loaded 2-core machine)
# For tests that need the tools: skipped on a developer's machine without them, failed under
# CI (where .ci/run installs them), so CI never silently skips them.
needs_prometheus = pytest.mark.skipif((PROMTOOL is None or PROMETHEUS is None) and not os.environ.get("CI"),
                                      reason=MISSING)


# --------------------------------------------------------------------------- promtool


@dataclass(frozen=True)
class Checked:
    """What `promtool check metrics` said: exit code 0 and no output means clean."""

    code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.output.strip()


def check_metrics(exposition: str | bytes) -> Checked:
    """Run `promtool check metrics` on a text exposition (parse errors and lint problems)."""
    if PROMTOOL is None:
        raise RuntimeError(MISSING)
    data = exposition.encode() if isinstance(exposition, str) else exposition
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=data, capture_output=True, timeout=60,
                          check=False)
    return Checked(done.returncode, (done.stdout + done.stderr).decode("utf-8", "replace"))


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


CONFIG = """\
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: {job}
    metrics_path: {path}
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""


class Prometheus:
    """A real Prometheus server for one test module; see the module docstring."""

    def __init__(self, workdir: Path, metrics_path: str = "/metrics",
                 interval: str = SCRAPE_INTERVAL) -> None:
        if PROMETHEUS is None:
            raise RuntimeError(MISSING)
        self.workdir = workdir
        self.metrics_path = metrics_path
        self.interval = interval
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._targets_file = workdir / "targets.json"

    # -- lifecycle

    def start(self, targets: Sequence[str] = (), attempts: int = 3) -> Self:
        """Start scraping `targets` ("host:port"); returns once the server is ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.set_targets(targets)
        config = self.workdir / "prometheus.yml"
        config.write_text(CONFIG.format(interval=self.interval, job=JOB, path=self.metrics_path,
                                        targets=self._targets_file), encoding="utf-8")
        for attempt in range(attempts):  # a free port may be taken before the server binds it
            self.port = free_port()
            self._proc = self._launch(config)
            if self._wait_ready():
                return self
            self.stop()
            if attempt == attempts - 1:
                raise RuntimeError(f"prometheus did not become ready:\n{self.log()[-2000:]}")
        return self

    def _launch(self, config: Path) -> subprocess.Popen[bytes]:
        assert PROMETHEUS is not None
        log = (self.workdir / "prometheus.log").open("wb")
        with log:
            return subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}", "--log.level=warn",
                 # Debian's defaults point at /etc/prometheus; a test needs none of them.
                 f"--web.console.templates={self.workdir}", f"--web.console.libraries={self.workdir}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited 10 s later."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    # -- targets and queries

    def set_targets(self, targets: Sequence[str]) -> None:
        """Scrape these "host:port" targets from now on (file_sd: picked up within seconds)."""
        tmp = self._targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": list(targets)}]), encoding="utf-8")
        tmp.replace(self._targets_file)  # atomic: the server never reads half a file

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query through /api/v1/query."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            doc = json.load(answer)
        if doc.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {doc}")
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The one sample's value of an instant query, or None when it has no sample."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{promql!r} has {len(result)} series: {result}")
        return float(result[0]["value"][1])

    def wait_for(self, promql: str, predicate: Callable[[float | None], bool] = lambda v: v is not None,
                 timeout: float = 30.0) -> float | None:
        """Poll `promql` until its value satisfies `predicate`; AssertionError names the last one."""
        deadline = time.monotonic() + timeout
        last: float | None = None
        while True:
            last = self.value(promql)
            if predicate(last):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r} is still {last!r} after {timeout:g}s\n{self.log()[-2000:]}")
            time.sleep(0.2)


def same(expected: float) -> Callable[[float | None], bool]:
    """A predicate for wait_for: the value equals `expected` (to float precision)."""
    return lambda value: value is not None and math.isclose(value, expected, rel_tol=1e-9)
