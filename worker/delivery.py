"""Delivery to one channel through a child process (worker.sender) that can be killed.

`Sender.send` never raises and never takes longer than the time it is given: a send
that overruns `send_timeout` is abandoned for good by killing the child, so no
thread, socket or process of it outlives the bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.redact import UrlInfo

# Starting the child: the interpreter and apprise's plugin registry (~0.3 s when idle).
START_TIMEOUT = 15.0
# The child's own answer may trail the end of the send by this much.
ANSWER_MARGIN = 1.0
# apprise's per-service pacing that the child sleeps out before a send starts (email: 5.5 s).
PACING_BOUND = 10.0
POLL = 0.25  # how often a wait looks at a shutdown's deadline


@dataclass(frozen=True, slots=True)
class Delivered:
    """The channel accepted the notification."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The channel did not accept it (or did not answer in time)."""

    reason: str


Result = Delivered | Failed


class Sender:
    """One channel's child process, started on the first send, killed on close."""

    def __init__(self, name: str, url: str, send_timeout: float,
                 environ: Mapping[str, str] | None = None) -> None:
        self.name = name
        self._url = url
        self._timeout = send_timeout
        self._environ = dict(os.environ if environ is None else environ)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: _Lines | None = None
        self._broken: str | None = None
        self._until: Callable[[], float | None] = lambda: None

    def send(self, message_id: int, title: str, body: str, notify_type: str,
             attach: tuple[str, ...] = (), until: Callable[[], float | None] = lambda: None) -> Result:
        """Send one message within send_timeout (plus the child's pacing); never raises.

        `until` may name a monotonic time (a shutdown's) past which the send is abandoned.
        """
        self._until = until
        started = self._started()
        if isinstance(started, Failed):
            return started
        proc, lines = started
        request = {"id": message_id, "title": title, "body": body, "notify_type": notify_type,
                   "attach": list(attach)}
        if not _write(proc, request):
            return self._abandon("the sender process ended unexpectedly")
        begun = self._read(lines, PACING_BOUND)
        if begun is None or begun.get("event") != "start":
            return self._abandon("the sender process did not start the send")
        answer = self._read(lines, self._timeout + ANSWER_MARGIN)
        if answer is None:
            return self._abandon(f"no answer within send_timeout ({self._timeout:g}s); send abandoned")
        if answer.get("ok") is True:
            return Delivered()
        return Failed(str(answer.get("reason") or "the channel did not accept the notification"))

    def close(self) -> None:
        """End the child: at once if it is busy, else by closing its input."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _close_pipes(proc)

    def _started(self) -> tuple[subprocess.Popen[bytes], _Lines] | Failed:
        if self._broken is not None:
            return Failed(self._broken)
        if self._proc is not None and self._lines is not None:
            return self._proc, self._lines
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.sender"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self._environ,
                close_fds=True, start_new_session=True,
            )
        except OSError as err:
            return Failed(f"could not start the sender process ({type(err).__name__})")
        self._proc, self._lines = proc, _Lines(proc)
        if not _write(proc, {"url": self._url, "send_timeout": self._timeout}):
            return self._abandon("the sender process ended unexpectedly")
        ready = self._read(self._lines, START_TIMEOUT)
        if ready is None:
            return self._abandon("the sender process did not start in time")
        if ready.get("ready") is not True:
            self._broken = str(ready.get("reason") or "the channel could not be loaded")
            self.close()
            return Failed(self._broken)
        return proc, self._lines

    def _read(self, lines: _Lines, seconds: float) -> dict[str, Any] | None:
        return lines.read(time.monotonic() + seconds, self._until)

    def _abandon(self, reason: str) -> Failed:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()
            _close_pipes(proc)
        return Failed(reason)


class _Lines:
    """JSON lines from the child's stdout, each read against a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        self._buffer = b""

    def read(self, deadline: float, until: Callable[[], float | None]) -> dict[str, Any] | None:
        """The next object, or None at end of output, on a bad line, or past the deadline
        (or past `until()`, checked every POLL seconds)."""
        while b"\n" not in self._buffer:
            hard = until()
            left = min(deadline, hard if hard is not None else deadline) - time.monotonic()
            if left <= 0:
                return None
            if not self._wait(min(left, POLL)):
                continue
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _wait(self, seconds: float) -> bool:
        with selectors.DefaultSelector() as selector:
            selector.register(self._fd, selectors.EVENT_READ)
            return bool(selector.select(seconds))


def _write(proc: subprocess.Popen[bytes], obj: dict[str, Any]) -> bool:
    try:
        assert proc.stdin is not None
        proc.stdin.write((json.dumps(obj) + "\n").encode())
        proc.stdin.flush()
    except (OSError, ValueError):
        return False
    return True


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            if pipe is not None:
                pipe.close()


def inspect_in_child(urls: list[str], environ: Mapping[str, str] | None = None) -> list[UrlInfo] | str:
    """redact.inspect_url for each URL, judged in a child process so that apprise's plugin
    registry never enters this one; a one-line reason if the child fails."""
    try:
        done = subprocess.run([sys.executable, "-m", "worker.sender", "inspect"],
                              input=json.dumps(urls).encode(), capture_output=True,
                              env=dict(os.environ if environ is None else environ),
                              timeout=START_TIMEOUT * 2, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"could not judge the channel URLs in a child process ({type(err).__name__})"
    try:
        infos = json.loads(done.stdout)["infos"]
        return [UrlInfo(i["valid"], i["problem"], i["shown"], tuple(i["secrets"])) for i in infos]
    except (ValueError, KeyError, TypeError):
        return f"could not judge the channel URLs in a child process (exit {done.returncode})"
