"""Sockets that end at a deadline, whatever phase of HTTP they are in.

requests' timeouts bound each socket operation, not the request: a server that
sends a byte now and then (in the TLS handshake, the status line, the headers or
the body) never trips them. A session with `WatchedAdapter` mounted opens every
socket through `_connect`, which hands it to the thread's running `Watch` before
connecting; at the deadline the watch shuts those sockets down, so the blocked
call returns at once. One watchdog thread per process keeps every deadline; no
socket outlives `watching`.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family


class Watch:
    """The sockets opened under one deadline, shut down together when it passes."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock
        self.expired = False
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []

    def passed(self) -> bool:
        """Whether the deadline has passed (by the clock, or by the watchdog's word)."""
        return self.expired or self.clock() >= self.deadline

    def left(self) -> float:
        """Seconds until the deadline; TimeoutError once it has passed."""
        seconds = self.deadline - self.clock()
        if seconds <= 0 or self.expired:
            raise TimeoutError
        return seconds

    def track(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once if it has passed)."""
        # Our own descriptor of the socket (a dup): shutting it down can never hit an fd
        # that urllib3 closed and the OS handed to someone else meanwhile, and it stays
        # valid after ssl detaches the original socket object for the TLS handshake.
        handle = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with self._lock:
            self._held.append(handle)
            if self.expired:
                _shut(handle)

    def release(self) -> None:
        """End every socket tracked so far (their connections are done) and drop our handles."""
        with self._lock:
            held, self._held = self._held, []
        for handle in held:
            _shut(handle)
            handle.close()

    def expire(self) -> None:
        """The deadline has passed: end every socket tracked, and any tracked from now on."""
        with self._lock:
            self.expired = True
            for handle in self._held:
                _shut(handle)


class _Watchdog:
    """One daemon thread for the process that expires each Watch at its deadline.

    Cheaper than a Timer per fetch: starting a thread costs up to a millisecond on a
    busy host, while adding a watch here only takes a lock (and wakes the thread only
    when the new deadline comes first).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._due: dict[Watch, float] = {}  # each watch's deadline on time.monotonic()
        self._wakes_at = math.inf
        self._thread: threading.Thread | None = None

    def add(self, watch: Watch) -> None:
        at = time.monotonic() + (watch.deadline - watch.clock())
        with self._changed:
            self._due[watch] = at
            if self._thread is None or not self._thread.is_alive():  # first use, or after fork
                self._thread = threading.Thread(target=self._run, name="cw-http-watchdog", daemon=True)
                self._thread.start()
            elif at < self._wakes_at:
                self._changed.notify()

    def discard(self, watch: Watch) -> None:
        """Forget `watch`; once this returns, the watchdog never touches it again."""
        with self._changed:
            self._due.pop(watch, None)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for watch in [w for w, at in self._due.items() if at <= now]:
                    del self._due[watch]
                    watch.expire()
                self._wakes_at = min(self._due.values(), default=math.inf)
                self._changed.wait(None if self._wakes_at == math.inf else self._wakes_at - now)


_WATCHDOG = _Watchdog()


def _shut(handle: socket.socket) -> None:
    # A recv blocked on the same socket in another thread returns at once (EOF).
    with contextlib.suppress(OSError):  # not connected (yet, or any more)
        handle.shutdown(socket.SHUT_RDWR)


_CURRENT: ContextVar[Watch | None] = ContextVar("creditwatch_http_watch", default=None)


@contextlib.contextmanager
def watching(deadline: float, clock: Callable[[], float]) -> Iterator[Watch]:
    """Within the block, sockets that WatchedAdapter opens in this thread end at `deadline`."""
    watch = Watch(deadline, clock)
    token = _CURRENT.set(watch)
    try:
        _WATCHDOG.add(watch)
        yield watch
    finally:
        _WATCHDOG.discard(watch)
        watch.release()
        _CURRENT.reset(token)


def _open_socket(conn: HTTPConnection) -> socket.socket:
    """urllib3's _new_conn, with each socket handed to the watch before it connects."""
    watch = _CURRENT.get()
    if watch is None:  # used outside `watching`: plain urllib3
        return HTTPConnection._new_conn(conn)
    try:
        return _connect(conn, watch)
    except socket.gaierror as err:
        raise NameResolutionError(conn.host, conn, err) from err
    except TimeoutError as err:
        msg = f"Connection to {conn.host} timed out"
        raise ConnectTimeoutError(conn, msg) from err
    except OSError as err:
        msg = f"Failed to establish a new connection: {err}"
        raise NewConnectionError(conn, msg) from err


def _connect(conn: HTTPConnection, watch: Watch) -> socket.socket:
    # urllib3's create_connection gives each address the whole connect timeout; here
    # every address gets at most what is left. (DNS itself is not covered: getaddrinfo
    # cannot be interrupted, only bounded by the resolver's own timeouts.)
    host = conn._dns_host.strip("[]")  # keeps a trailing dot for the resolver, as urllib3 does
    error = OSError(f"no address found for {conn.host}")
    for family, kind, proto, _, address in socket.getaddrinfo(
            host, conn.port, allowed_gai_family(), socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            watch.track(sock)
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            wanted = conn.timeout if isinstance(conn.timeout, int | float) else math.inf
            sock.settimeout(min(wanted, watch.left()))
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address)
        except OSError as err:
            sock.close()
            error = err
            continue
        return sock
    raise error


class _WatchedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _open_socket(self)


class _WatchedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _open_socket(self)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class WatchedAdapter(HTTPAdapter):
    """requests' adapter, with pools whose connections hand their sockets to the watch."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
