"""systemd's notify protocol against real AF_UNIX datagram sockets bound by the test: the
Notifier alone (path and abstract namespace, $WATCHDOG_USEC/$WATCHDOG_PID), and the real
`creditwatch run` under a fake $NOTIFY_SOCKET: READY=1 after the first tick, WATCHDOG=1
after each tick, STOPPING=1 on SIGTERM, in that order; with WatchdogSec, keep-alives while
idle and none while a tick hangs."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
from conftest import StartCli
from fakes import FakeOpenRouter, Resp, make_settings, write_settings

from worker.sdnotify import Notifier, socket_address, watchdog_usec

KEY = "sk-or-v1-sdnotify-0010"
ENV = {"OPENROUTER_API_KEY": KEY}


@dataclass(frozen=True)
class Datagram:
    at: float  # time.monotonic() on arrival
    lines: tuple[str, ...]
    fetches: int  # how many fetches the fake API had seen when it arrived


class NotifyReceiver:
    """What systemd's end of $NOTIFY_SOCKET does: a bound AF_UNIX datagram socket that
    keeps every message. `abstract` binds in the abstract namespace (NOTIFY_SOCKET=@...)."""

    def __init__(self, abstract: bool = False, api: FakeOpenRouter | None = None) -> None:
        self._api = api
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"cw-test-{uuid.uuid4().hex}"
            self._sock.bind(f"\0{name}")
            self.env_value = f"@{name}"
            self._dir: tempfile.TemporaryDirectory[str] | None = None
        else:
            # A short directory: an AF_UNIX path holds at most 107 bytes, pytest's tmp_path can be longer.
            self._dir = tempfile.TemporaryDirectory(prefix="cw-")
            self.env_value = os.path.join(self._dir.name, "notify")
            self._sock.bind(self.env_value)
        self._sock.settimeout(0.05)
        self._changed = threading.Condition()
        self._got: list[Datagram] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        if self._dir is not None:
            self._dir.cleanup()

    def _read(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                if stopping:  # once stopping, end when what was queued has been read
                    return
                continue
            except OSError:  # the socket was closed
                return
            fetches = self._api.count if self._api is not None else 0
            with self._changed:
                self._got.append(Datagram(time.monotonic(), tuple(data.decode().split("\n")), fetches))
                self._changed.notify_all()

    @property
    def datagrams(self) -> list[Datagram]:
        with self._changed:
            return list(self._got)

    def assignments(self) -> list[str]:
        """Every KEY=VALUE received, in order of arrival."""
        return [line for d in self.datagrams for line in d.lines]

    def wait_for(self, done: Callable[[list[Datagram]], bool], timeout: float = 20.0) -> None:
        """Block until `done(datagrams so far)`; TimeoutError lists what arrived."""
        with self._changed:
            if not self._changed.wait_for(lambda: done(self._got), timeout):
                raise TimeoutError(f"notifications so far: {[d.lines for d in self._got]}")


def having(line: str, at_least: int = 1) -> Callable[[list[Datagram]], bool]:
    return lambda got: sum(line in d.lines for d in got) >= at_least


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Iterator[NotifyReceiver]:
    with NotifyReceiver(abstract=request.param) as rx:
        yield rx


# --------------------------------------------------------------------------- the Notifier


def test_each_message_arrives_as_one_datagram(receiver: NotifyReceiver) -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": receiver.env_value})

    assert notifier.enabled
    assert notifier.ready("first tick done")
    assert notifier.watchdog()
    assert notifier.status("line one\nline two")
    assert notifier.stopping()
    receiver.wait_for(having("STOPPING=1"))

    assert [d.lines for d in receiver.datagrams] == [
        ("READY=1", "STATUS=first tick done"),
        ("WATCHDOG=1",),
        ("STATUS=line one line two",),  # one line: the protocol splits assignments on newlines
        ("STOPPING=1",),
    ]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"},
                                     {"NOTIFY_SOCKET": "vsock:2:1234"}, {"NOTIFY_SOCKET": "@"}],
                         ids=["unset", "empty", "relative", "vsock", "bare-at"])
def test_without_a_usable_socket_it_does_nothing(environ: dict[str, str]) -> None:
    notifier = Notifier.from_environ(environ)

    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False


def test_a_socket_nobody_listens_on_never_raises(tmp_path: Path) -> None:
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    too_long = Notifier.from_environ({"NOTIFY_SOCKET": "/" + "x" * 200})
    unbound = Notifier.from_environ({"NOTIFY_SOCKET": f"@cw-nobody-{uuid.uuid4().hex}"})

    for notifier in (gone, too_long, unbound):
        assert notifier.enabled
        assert notifier.ready() is False
        assert notifier.stopping("bye") is False


def test_socket_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"
    assert socket_address("") is None


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 30_000_000),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30_000_000),  # meant for this process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "pid"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_PID": "4242"}, None),
    ({}, None),
])
def test_watchdog_period_follows_sd_watchdog_enabled(environ: dict[str, str], expected: int | None) -> None:
    assert watchdog_usec(environ, pid=4242) == expected
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x", **environ}, pid=4242)
    assert notifier.watchdog_seconds == (None if expected is None else expected / 1e6)


# --------------------------------------------------------------------------- `creditwatch run`


def test_run_says_ready_watchdog_per_tick_and_stopping(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> None:
    cfg = make_settings(tmp_path, fake_api)
    fake_api.set_default(Resp.credits(100.0, 10.0, delay=0.8))  # each tick takes 0.8 s
    # A path, as systemd uses (/run/systemd/notify); the abstract namespace is tested above.
    with NotifyReceiver(api=fake_api) as rx:
        env = {**ENV, "NOTIFY_SOCKET": rx.env_value, "WATCHDOG_USEC": None, "WATCHDOG_PID": None}
        proc = start_cli("run", config=cfg, env=env)

        rx.wait_for(having("WATCHDOG=1", 3))
        fake_api.wait_for_requests(4, timeout=10)
        result = proc.stop(signal.SIGTERM, timeout=20)  # while the fourth tick waits on the API

    assert result.code == 0, result
    assert result.stderr.count("tick fetch=ok") == 4, "the tick in hand did not finish"
    said = rx.assignments()
    names = [line.split("=")[0] for line in said if line in ("READY=1", "WATCHDOG=1", "STOPPING=1")]
    # One WATCHDOG=1 per tick that ended before the stop, nothing after STOPPING=1.
    assert names == ["READY", "WATCHDOG", "WATCHDOG", "WATCHDOG", "STOPPING"], said
    assert said[-1].startswith(("STOPPING=1", "STATUS=", "EXTEND_TIMEOUT_USEC=")), said
    ready = next(d for d in rx.datagrams if "READY=1" in d.lines)
    assert ready.fetches >= 1, "READY=1 came before the first tick"
    assert all(line.isprintable() and "=" in line for line in said), said


def test_with_a_watchdog_run_keeps_it_fed_while_idle_and_starves_it_while_a_tick_hangs(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> None:
    cfg = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "2s"
        [schedule]
        interval = "2s"
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        """)
    fake_api.enqueue(Resp.credits(100.0, 10.0))
    fake_api.set_default(Resp(hang=True))  # every tick after the first hangs until its timeout
    with NotifyReceiver(abstract=True, api=fake_api) as rx:
        env = {**ENV, "NOTIFY_SOCKET": rx.env_value, "WATCHDOG_USEC": "400000", "WATCHDOG_PID": None}
        proc = start_cli("run", config=cfg, env=env)

        hung = fake_api.wait_for_requests(2, timeout=20)[1].at  # the second tick hangs from here
        # A WATCHDOG=1 well into that tick: its end (after the 2 s timeout), if all is well.
        rx.wait_for(lambda got: any("WATCHDOG=1" in d.lines and d.at > hung + 1.5 for d in got), timeout=20)
        result = proc.stop(signal.SIGTERM, timeout=30)

    assert result.code == 0, result
    beats = [d.at for d in rx.datagrams if "WATCHDOG=1" in d.lines]
    ready = next(d.at for d in rx.datagrams if "READY=1" in d.lines)
    # Idle for about 2 s after the first tick, with WatchdogSec=0.4s: a keep-alive every 0.2 s.
    idle = [at for at in beats if ready < at < hung]
    assert len(idle) >= 4, [round(at - ready, 2) for at in beats]
    # The hanging tick gets no keep-alive, so systemd would kill it. (Its start's own ping may
    # be read a moment after the fetch began: the window opens 0.3 s in.)
    during = [at for at in beats if hung + 0.3 < at < hung + 1.5]
    assert during == [], [round(at - hung, 2) for at in beats]
    assert "WatchdogSec=0.4s is shorter than the longest a tick may take" in result.stderr

