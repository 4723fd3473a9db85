"""Hostile servers for the fetch: compressed answers, and sockets that trickle or stay silent.

Like tests/fakes.py, every server binds 127.0.0.1 on an ephemeral port, runs in
daemon threads and works as a context manager; the code under test talks to it
over real sockets. `RawServer` speaks just enough TCP (and HTTP or TLS bytes)
to misbehave in ways http.server cannot: headers one byte at a time, a TLS
record that never ends, or nothing at all. It counts the connections it holds
open, so a test can see from outside whether the client let go of its sockets.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

from fakes import LOOPBACK, FakeOpenRouter, RecordedRequest, Resp

# --------------------------------------------------------------------------- compression


def gzipped(data: bytes) -> bytes:
    """gzip with a fixed mtime, so the same body packs to the same bytes in every process."""
    return gzip.compress(data, mtime=0)


def raw_deflate(data: bytes) -> bytes:
    """A deflate stream with no zlib wrapper, as some servers send for `deflate`."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


ENCODERS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    # style: (the Content-Encoding announced, how the body is packed)
    "gzip": ("gzip", gzipped),
    "deflate": ("deflate", zlib.compress),
    "raw-deflate": ("deflate", raw_deflate),
}


class CompressingOpenRouter(FakeOpenRouter):
    """FakeOpenRouter that compresses each 200 answer when the request's Accept-Encoding
    allows it, as a CDN in front of OpenRouter would; `style` picks how (see ENCODERS)."""

    def __init__(self, style: str = "gzip", total_credits: float = 100.0,
                 total_usage: float = 0.0) -> None:
        super().__init__(total_credits, total_usage)
        self.style = style

    def _answer_for(self, request: RecordedRequest) -> Resp:
        resp = super()._answer_for(request)
        label, pack = ENCODERS[self.style]
        offered = {part.split(";")[0].strip().lower()
                   for part in (request.header("Accept-Encoding") or "").split(",")}
        if resp.status != 200 or label not in offered:
            return resp
        body, content_type = resp.encoded()
        return replace(resp, body=pack(body), content_type=content_type,
                       headers={**resp.headers, "Content-Encoding": label})


# --------------------------------------------------------------------------- raw sockets

Behaviour = Callable[[socket.socket, threading.Event], None]
POLL = 0.05


class RawServer:
    """Accepts TCP connections and runs `behaviour(conn, stopping)` on each, in its own thread.

    `.open` counts the connections accepted and not yet closed; a behaviour returns as
    soon as the peer closes (every wait below watches for that), so `.open` falls back
    within about POLL seconds of the client letting go.
    """

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._accepted = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, 0))
        listener.listen(128)
        listener.settimeout(POLL)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            held = list(self._open)
        for conn in held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(2.0)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._listener is not None, "server is not running"
        return int(self._listener.getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/api/v1"

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._open)

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def wait_for_accepted(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.accepted < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"expected {n} connections, got {self.accepted}")
            time.sleep(POLL)

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._open.add(conn)
                self._accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._behaviour(conn, self._stopping)
        except OSError:
            pass  # the client went away mid-write: that is what these servers provoke
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()


def _peer_closed_or_stopping(conn: socket.socket, stopping: threading.Event, seconds: float) -> bool:
    """Wait up to `seconds`; True as soon as the peer closed (EOF or reset) or the server stops."""
    deadline = time.monotonic() + seconds
    while not stopping.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([conn], [], [], min(left, POLL))
        if readable:
            try:
                if not conn.recv(4096, socket.MSG_PEEK):
                    return True
                conn.recv(4096)  # request bytes we do not care about
            except OSError:
                return True
    return True


def _read_request_head(conn: socket.socket, stopping: threading.Event) -> bool:
    """Read up to the blank line that ends an HTTP request head; False if the peer left."""
    seen = b""
    while b"\r\n\r\n" not in seen:
        readable, _, _ = select.select([conn], [], [], POLL)
        if stopping.is_set():
            return False
        if readable:
            chunk = conn.recv(4096)
            if not chunk:
                return False
            seen += chunk
    return True


def trickle_headers(gap: float) -> Behaviour:
    """A status line, then one header byte every `gap` seconds, forever: the head never ends."""
    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        if not _read_request_head(conn, stopping):
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while not _peer_closed_or_stopping(conn, stopping, gap):
            conn.sendall(b"a")
    return behave


def silent(conn: socket.socket, stopping: threading.Event) -> None:
    """Accept, read the request, and never send a byte."""
    while not _peer_closed_or_stopping(conn, stopping, 3600):
        pass


def trickle_tls_record(gap: float) -> Behaviour:
    """A TLS handshake record header announcing 16 KiB, then one byte every `gap` seconds."""
    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        if _peer_closed_or_stopping(conn, stopping, 0.2):  # let the ClientHello arrive
            return
        conn.sendall(b"\x16\x03\x03\x40\x00")
        while not _peer_closed_or_stopping(conn, stopping, gap):
            conn.sendall(b"\x00")
    return behave


# --------------------------------------------------------------------------- a process's own resources


def thread_count(pid: int) -> int:
    """How many threads the process has, from outside (/proc/<pid>/task)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def _tcp_inodes_to(port: int, pid: int) -> set[str]:
    """Inodes of TCP sockets, in the process's network namespace, whose peer is 127.0.0.1:port."""
    inodes: set[str] = set()
    wanted = f"0100007F:{port:04X}"
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[2] == wanted:
                inodes.add(fields[9])
    return inodes


def sockets_to(port: int, pid: int | None = None) -> int:
    """How many TCP connections to 127.0.0.1:port the process holds open (by any number of fds)."""
    pid = os.getpid() if pid is None else pid
    inodes = _tcp_inodes_to(port, pid)
    held: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # an fd closed while we look
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held.add(target[8:-1])
    return len(held)
