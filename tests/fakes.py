"""Real loopback servers that stand in for OpenRouter, webhooks and SMTP in tests.

Every fake binds 127.0.0.1 on an ephemeral port, runs in daemon threads, is
thread-safe, and works as a context manager. Nothing here patches requests or
apprise: the code under test talks to these servers over real sockets, so
timeouts, redirects, truncated bodies and failed deliveries behave exactly as
they would in production.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import gzip
import hashlib
import json
import logging
import socket
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

LOOPBACK = "127.0.0.1"

Body = bytes | str | dict[str, Any] | list[Any] | None


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class Resp:
    """One scripted HTTP answer, including the ways a server can misbehave."""

    status: int = 200
    body: Body = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line is sent
    trickle: float | None = None  # seconds between single body bytes
    hang: bool = False  # read the request, then never answer until the server stops
    close_mid_body: bool = False  # declare more bytes than sent, send half, close
    content_type: str | None = None  # None: inferred from the body's type

    @classmethod
    def json(cls, obj: Any, status: int = 200, **kwargs: Any) -> Resp:
        """A JSON answer; NaN and Infinity are written as Python's json writes them."""
        return cls(status=status, body=json.dumps(obj).encode(), content_type="application/json",
                   **kwargs)

    @classmethod
    def credits(cls, total_credits: Any, total_usage: Any, **kwargs: Any) -> Resp:
        """OpenRouter's GET /credits answer."""
        data = {"total_credits": total_credits, "total_usage": total_usage}
        return cls.json({"data": data}, **kwargs)

    @classmethod
    def status_only(cls, code: int, headers: Mapping[str, str] | None = None) -> Resp:
        """A bare status with an empty body, e.g. 429 with Retry-After."""
        return cls(status=code, body=b"", headers=dict(headers or {}))

    @classmethod
    def redirect(cls, location: str, code: int = 302) -> Resp:
        return cls(status=code, body=b"", headers={"Location": location})

    @classmethod
    def html(cls, text: str, status: int = 200) -> Resp:
        """What a captive portal or a misrouted proxy would serve instead of JSON."""
        return cls(status=status, body=text, content_type="text/html; charset=utf-8")

    def encoded(self) -> tuple[bytes, str | None]:
        """The body as bytes and the content type to announce (None: no header)."""
        if self.body is None:
            return b"", self.content_type
        if isinstance(self.body, bytes):
            return self.body, self.content_type
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/plain; charset=utf-8"
        return json.dumps(self.body).encode(), self.content_type or "application/json"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it: `path` keeps any query string, `at` is
    time.monotonic() once the request head was read."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def header(self, name: str) -> str | None:
        """Case-insensitive header lookup (HTTP header names are case-insensitive)."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


# --------------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the owning fake; the fake decides what to answer."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    # A bound on every socket read and write, so a client that connects and then
    # goes silent cannot pin a handler thread forever.
    timeout = 5.0

    def setup(self) -> None:
        super().setup()
        # Trickled bytes must leave one by one, not be batched by Nagle's algorithm.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        self.close_connection = True  # one request per connection keeps counts exact
        self.server.dispatch(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass  # pytest captures stderr anyway; access logs only add noise


class _HTTPServer(ThreadingHTTPServer):
    """A threading server that can drop its open connections and join its threads."""

    daemon_threads = True
    block_on_close = False  # stop() joins with a bound instead of forever
    # socketserver's default backlog of 5 drops SYNs under a burst of parallel
    # clients, which then retry a second later: a fake that adds latency by accident.
    request_queue_size = 128

    def __init__(self, dispatch: Callable[[_Handler], None]) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.dispatch = dispatch
        self._lock = threading.Lock()
        self._open: dict[socket.socket, threading.Thread] = {}

    def process_request(self, request: Any, client_address: Any) -> None:
        worker = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True)
        with self._lock:
            self._open[request] = worker
        worker.start()

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-answer are the point of several scripts

    def abort_open(self, join_timeout: float) -> None:
        """Cut every open connection and wait (bounded) for its thread to end."""
        with self._lock:
            open_now = list(self._open.items())
        for sock, _ in open_now:
            with contextlib.suppress(OSError):  # already closed by client or handler
                sock.shutdown(socket.SHUT_RDWR)
        for _, worker in open_now:
            worker.join(join_timeout)


def _read_body(handler: _Handler) -> bytes:
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def _header_lines(resp: Resp, body: bytes, content_type: str | None) -> dict[str, str]:
    """Defaults first, then the script's headers, which win case-insensitively."""
    declared = len(body) + 64 if resp.close_mid_body else len(body)
    lines = {"Content-Length": str(declared), "Connection": "close"}
    if content_type:
        lines["Content-Type"] = content_type
    overridden = {k.lower() for k in resp.headers}
    lines = {k: v for k, v in lines.items() if k.lower() not in overridden}
    return lines | dict(resp.headers)


def _write_response(handler: _Handler, resp: Resp, stopping: threading.Event) -> None:
    """Send `resp`, honouring its faults; every wait ends early when the server stops."""
    if resp.hang:
        stopping.wait()
        return
    if resp.delay and stopping.wait(resp.delay):
        return
    body, content_type = resp.encoded()
    handler.send_response(resp.status)
    for name, value in _header_lines(resp, body, content_type).items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command == "HEAD":
        return
    if resp.close_mid_body:
        handler.wfile.write(body[: len(body) // 2])
    elif resp.trickle is not None:
        _trickle(handler, body, resp.trickle, stopping)
    else:
        handler.wfile.write(body)


def _trickle(handler: _Handler, body: bytes, gap: float, stopping: threading.Event) -> None:
    for index in range(len(body)):
        handler.wfile.write(body[index : index + 1])
        if index + 1 < len(body) and stopping.wait(gap):
            return


class _LoopbackServer:
    """Start/stop, context manager and request recording shared by the HTTP fakes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._recorded: list[RecordedRequest] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._stopping.clear()
        self._httpd = _HTTPServer(self._dispatch)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release hanging and trickling handlers first, so stopping never waits on them."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.abort_open(join_timeout=2.0)
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join(2.0)
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server is not running")
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._recorded)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._recorded)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until at least `n` requests arrived; TimeoutError names what did."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._recorded) >= n, timeout):
                raise TimeoutError(f"expected {n} requests, got {len(self._recorded)}")
            return list(self._recorded)

    def _record(self, handler: _Handler) -> RecordedRequest:
        request = RecordedRequest(method=handler.command, path=handler.path,
                                  headers=dict(handler.headers.items()),
                                  body=_read_body(handler), at=time.monotonic())
        with self._changed:
            self._recorded.append(request)
            self._changed.notify_all()
        return request

    def _dispatch(self, handler: _Handler) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- OpenRouter


# Scripted for one path: a Resp is served instead of the real answer (and a PATCH is then
# not applied); a callable changes the real answer (e.g. `trickled(0.05)`, `gzip_encoded`).
Script = Resp | Callable[[Resp], Resp]

KEYS_PAGE = 100  # keys per page of GET /keys, as OpenRouter serves them
_PATCHABLE = ("disabled", "limit", "name", "limit_reset", "include_byok_in_limit")


def _not_found() -> Resp:
    return Resp.json({"error": {"message": "Not Found", "code": 404}}, status=404)


def _unauthorized() -> Resp:
    return Resp.json({"error": {"message": "No auth credentials found", "code": 401}}, status=401)


def _bad_request(message: str) -> Resp:
    return Resp.json({"error": {"message": message, "code": 400}}, status=400)


def key_item(name: str, *, limit: float | None = None, remaining: float | None = None,
             usage: float | None = None, usage_daily: float = 0.0,
             usage_weekly: float | None = None, usage_monthly: float | None = None,
             disabled: bool = False, limit_reset: str | None = None,
             key_hash: str | None = None, **extra: Any) -> dict[str, Any]:
    """One item of OpenRouter's GET /keys, every documented field set: a 64-hex hash and a
    masked label ("sk-or-v1-abc...xyz") derived from `name` (so stable across runs), weekly
    and monthly usage defaulting to the day's, and `limit_remaining` to what the limit's
    period leaves (None without a limit). `extra` adds or overrides raw fields."""
    secret = hashlib.sha256(f"fake-secret:{name}".encode()).hexdigest()
    weekly = usage_daily if usage_weekly is None else usage_weekly
    monthly = weekly if usage_monthly is None else usage_monthly
    total = monthly if usage is None else usage
    if remaining is None and limit is not None:
        used = {"daily": usage_daily, "weekly": weekly, "monthly": monthly}.get(limit_reset or "",
                                                                                total)
        remaining = max(0.0, round(limit - used, 6))
    item = {
        "hash": key_hash or hashlib.sha256(f"fake-key:{name}".encode()).hexdigest(),
        "name": name, "label": f"sk-or-v1-{secret[:3]}...{secret[-3:]}", "disabled": disabled,
        "limit": limit, "limit_remaining": remaining, "limit_reset": limit_reset,
        "include_byok_in_limit": False, "usage": total, "usage_daily": usage_daily,
        "usage_weekly": weekly, "usage_monthly": monthly, "byok_usage": 0.0,
        "byok_usage_daily": 0.0, "byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0,
        "created_at": "2025-08-24T10:30:00Z", "updated_at": "2025-08-24T15:45:00Z",
        "expires_at": None, "creator_user_id": "user_2dHFtVWx2n56w6HkM0000000000",
    }
    return item | extra


def keys_page(items: list[dict[str, Any]], **kwargs: Any) -> Resp:
    """OpenRouter's GET /keys answer holding exactly these items."""
    return Resp.json({"data": items}, **kwargs)


def delayed(seconds: float) -> Callable[[Resp], Resp]:
    """A script that sends the real answer `seconds` late."""
    return lambda resp: replace(resp, delay=seconds)


def trickled(gap: float) -> Callable[[Resp], Resp]:
    """A script that sends the real answer's body one byte every `gap` seconds."""
    return lambda resp: replace(resp, trickle=gap)


def gzip_encoded(resp: Resp) -> Resp:
    """A script that sends the real answer gzip-compressed, announced as such."""
    body, content_type = resp.encoded()
    return replace(resp, body=gzip.compress(body, mtime=0), content_type=content_type,
                   headers={**resp.headers, "Content-Encoding": "gzip"})


class FakeAccount:
    """One account of a FakeOpenRouter, told apart by its bearer key: a balance (a FIFO of
    one-shot /credits answers, then a default), its keys (most recent first, as the API
    lists them) and answers scripted per path. Thread-safe through the server's lock."""

    def __init__(self, lock: threading.Lock, api_key: str | None, total_credits: float,
                 total_usage: float) -> None:
        self.api_key = api_key
        self._lock = lock
        self._queue: deque[Resp] = deque()
        self._default = Resp.credits(total_credits, total_usage)
        self._keys: list[dict[str, Any]] = []
        self._scripts: list[tuple[str | None, str, deque[Script]]] = []

    def set_balance(self, total_credits: Any, total_usage: Any) -> None:
        self.set_default(Resp.credits(total_credits, total_usage))

    def set_default(self, resp: Resp) -> None:
        with self._lock:
            self._default = resp

    def enqueue(self, *responses: Resp) -> None:
        with self._lock:
            self._queue.extend(responses)

    @property
    def pending(self) -> int:
        """How many enqueued /credits answers are still unused."""
        with self._lock:
            return len(self._queue)

    def set_keys(self, items: list[dict[str, Any]]) -> None:
        """Replace the keys (items as `key_item` builds them), most recent first."""
        with self._lock:
            self._keys = [dict(item) for item in items]

    def add_keys(self, *items: dict[str, Any]) -> None:
        """Create keys in this order: the last becomes the most recent (first on page 1)."""
        with self._lock:
            self._keys[:0] = [dict(item) for item in reversed(items)]

    @property
    def keys(self) -> list[dict[str, Any]]:
        """A copy of every key, disabled ones included, most recent first."""
        with self._lock:
            return [dict(item) for item in self._keys]

    def key(self, name: str) -> dict[str, Any]:
        """A copy of the key with this name (KeyError if none)."""
        found = [item for item in self.keys if item.get("name") == name]
        if not found:
            raise KeyError(name)
        return found[0]

    def script(self, path: str, *answers: Script, method: str | None = None) -> None:
        """One-shot answers for requests to `path`, used in order before the real answer.

        `path` with a query ("/api/v1/keys?offset=100") matches that exact request; without
        one it matches any query. `method` None matches any method."""
        with self._lock:
            self._scripts.append((method, path, deque(answers)))

    def answer(self, request: RecordedRequest) -> Resp:
        """What this account answers `request` (already routed to it); applies a PATCH."""
        with self._lock:
            scripted = self._scripted(request)
            if isinstance(scripted, Resp):
                return scripted
            resp = self._real_answer(request)
        return resp if scripted is None else scripted(resp)

    def _scripted(self, request: RecordedRequest) -> Script | None:
        bare = request.path.split("?")[0]
        for method, path, answers in self._scripts:
            if answers and method in (None, request.method) and path in (request.path, bare):
                return answers.popleft()
        return None

    def _real_answer(self, request: RecordedRequest) -> Resp:
        bare = request.path.split("?")[0]
        if bare == FakeOpenRouter.CREDITS_PATH:
            return self._queue.popleft() if self._queue else self._default
        if bare == FakeOpenRouter.KEYS_PATH:
            return self._list(request.path)
        return self._patch(bare.rsplit("/", 1)[1], request.body)

    def _list(self, path: str) -> Resp:
        query = parse_qs(urlsplit(path).query)
        try:
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            return _bad_request("offset must be an integer")
        if offset < 0:
            return _bad_request("offset must not be negative")
        listed = self._keys
        if query.get("include_disabled", ["false"])[0] != "true":
            listed = [item for item in listed if not item.get("disabled")]
        return keys_page(listed[offset:offset + KEYS_PAGE])

    def _patch(self, key_hash: str, body: bytes) -> Resp:
        found = [item for item in self._keys if item.get("hash") == key_hash]
        if not found:
            return _not_found()
        try:
            change = json.loads(body)
        except ValueError:
            return _bad_request("the body is not JSON")
        if not isinstance(change, dict):
            return _bad_request("the body is not an object")
        item = found[0]
        item.update({name: change[name] for name in _PATCHABLE if name in change})
        item["updated_at"] = "2025-08-25T09:00:00Z"
        return Resp.json({"data": dict(item)})


class FakeOpenRouter(_LoopbackServer):
    """Serves GET /api/v1/credits from a FIFO of one-shot answers, then a default.

    With `api_key` set, a request without `Authorization: Bearer <api_key>` gets
    OpenRouter's 401 and does not consume the queue.

    It also serves GET /api/v1/keys (`offset`, 100 keys a page, disabled keys only with
    `include_disabled=true`) and PATCH /api/v1/keys/{hash} (applied: a disabled key leaves
    later pages). Accounts: the one built from the arguments (`default_account`, which the
    methods here act on) and any added with `add_account`, each reached with its own
    bearer key. Once an account was added, a key that is none of theirs gets 401, even
    when `api_key` is None.
    """

    CREDITS_PATH = "/api/v1/credits"
    KEYS_PATH = "/api/v1/keys"

    def __init__(self, total_credits: float = 100.0, total_usage: float = 0.0,
                 api_key: str | None = None) -> None:
        super().__init__()
        self._legacy = FakeAccount(self._lock, api_key, total_credits, total_usage)
        self._accounts: list[FakeAccount] = []

    @property
    def base_url(self) -> str:
        """What goes into `[openrouter] base_url`."""
        return f"{self.origin}/api/v1"

    @property
    def credits_url(self) -> str:
        return f"{self.origin}{self.CREDITS_PATH}"

    @property
    def keys_url(self) -> str:
        return f"{self.origin}{self.KEYS_PATH}"

    @property
    def default_account(self) -> FakeAccount:
        return self._legacy

    def add_account(self, api_key: str, total_credits: float = 100.0, total_usage: float = 0.0,
                    keys: list[dict[str, Any]] | None = None) -> FakeAccount:
        """Another account, answering requests that carry `Bearer <api_key>`."""
        account = FakeAccount(self._lock, api_key, total_credits, total_usage)
        account.set_keys(keys or [])
        with self._lock:
            self._accounts.append(account)
        return account

    def set_balance(self, total_credits: Any, total_usage: Any) -> None:
        self._legacy.set_balance(total_credits, total_usage)

    def set_default(self, resp: Resp) -> None:
        self._legacy.set_default(resp)

    def enqueue(self, *responses: Resp) -> None:
        self._legacy.enqueue(*responses)

    @property
    def pending(self) -> int:
        """How many enqueued answers are still unused."""
        return self._legacy.pending

    def set_keys(self, items: list[dict[str, Any]]) -> None:
        self._legacy.set_keys(items)

    def add_keys(self, *items: dict[str, Any]) -> None:
        self._legacy.add_keys(*items)

    @property
    def keys(self) -> list[dict[str, Any]]:
        return self._legacy.keys

    def key(self, name: str) -> dict[str, Any]:
        return self._legacy.key(name)

    def script(self, path: str, *answers: Script, method: str | None = None) -> None:
        self._legacy.script(path, *answers, method=method)

    @property
    def patches(self) -> list[RecordedRequest]:
        """Every PATCH received (any path, any account), in arrival order."""
        return [request for request in self.requests if request.method == "PATCH"]

    def _dispatch(self, handler: _Handler) -> None:
        request = self._record(handler)
        _write_response(handler, self._answer_for(request), self._stopping)

    def _answer_for(self, request: RecordedRequest) -> Resp:
        if not self._routed(request):
            return _not_found()
        account = self._account_for(request.header("Authorization"))
        return _unauthorized() if account is None else account.answer(request)

    def _routed(self, request: RecordedRequest) -> bool:
        bare = request.path.split("?")[0]
        if request.method == "GET":
            return bare in (self.CREDITS_PATH, self.KEYS_PATH)
        head, _, key_hash = bare.rpartition("/")
        return request.method == "PATCH" and head == self.KEYS_PATH and bool(key_hash)

    def _account_for(self, authorization: str | None) -> FakeAccount | None:
        with self._lock:
            for account in self._accounts:
                if authorization == f"Bearer {account.api_key}":
                    return account
            if self._legacy.api_key is None:
                return None if self._accounts else self._legacy
        return self._legacy if authorization == f"Bearer {self._legacy.api_key}" else None


class CaptureServer(_LoopbackServer):
    """A different origin (another port) to redirect to: records, answers valid credits.

    It answers a valid credits body so that a client which wrongly follows a
    redirect appears to succeed; check `.count` (was it followed?) and the
    recorded headers (did the key travel?). Note that requests itself drops
    Authorization when a redirect changes host, port or scheme, so a leak here
    means the key was re-added (e.g. from ~/.netrc) or sent some other way.
    """

    def __init__(self, total_credits: float = 100.0, total_usage: float = 0.0) -> None:
        super().__init__()
        self._answer = Resp.credits(total_credits, total_usage)

    @property
    def url(self) -> str:
        return f"{self.origin}/api/v1/credits"

    @property
    def authorization_headers(self) -> list[str | None]:
        return [r.header("Authorization") for r in self.requests]

    def _dispatch(self, handler: _Handler) -> None:
        self._record(handler)
        _write_response(handler, self._answer, self._stopping)


# --------------------------------------------------------------------------- webhooks


class WebhookReceiver(_LoopbackServer):
    """Receives apprise `json://` notifications and keeps the accepted ones in order.

    apprise 2.3.0's json:// plugin POSTs `Content-Type: application/json` with
    exactly these keys: {"version": "1.0", "title": str, "message": str,
    "attachments": [], "type": "info" | "success" | "warning" | "failure"}.
    It treats any non-2xx answer or a connection error as a failed delivery
    (notify() is then falsy), and its default read timeout is 4 s (`?rto=`).

    `.requests` holds every attempt; `.messages` only the JSON bodies that were
    answered 2xx. A message is accepted when the server decides to answer 2xx,
    even if the client has given up by then, as a real receiver would.
    """

    def __init__(self) -> None:
        super().__init__()
        self._messages: list[dict[str, Any]] = []
        self._fail_remaining = 0
        self._fail_status = 500
        self._failing = False
        self._hang = 0.0

    def apprise_url(self, path: str = "hook") -> str:
        return f"json://{LOOPBACK}:{self.port}/{path.lstrip('/')}"

    def fail_next(self, n: int, status: int = 500) -> None:
        with self._lock:
            self._fail_remaining, self._fail_status = n, status

    def set_failing(self, failing: bool, status: int = 500) -> None:
        with self._lock:
            self._failing, self._fail_status = failing, status

    def set_hang(self, seconds: float) -> None:
        """Wait this long before answering each POST (0 turns it off)."""
        with self._lock:
            self._hang = seconds

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Block until at least `n` messages were accepted; TimeoutError otherwise."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= n, timeout):
                raise TimeoutError(f"expected {n} webhook messages, got {len(self._messages)}")
            return list(self._messages)

    def _dispatch(self, handler: _Handler) -> None:
        request = self._record(handler)
        with self._lock:
            hang = self._hang
        if hang and self._stopping.wait(hang):
            return
        _write_response(handler, self._decide(request), self._stopping)

    def _decide(self, request: RecordedRequest) -> Resp:
        with self._changed:
            if self._fail_remaining > 0 or self._failing:
                self._fail_remaining = max(0, self._fail_remaining - 1)
                return Resp.json({"error": "injected failure"}, status=self._fail_status)
            try:
                message = json.loads(request.body)
            except ValueError:
                return Resp.json({"error": "body is not JSON"}, status=400)
            self._messages.append(message)
            self._changed.notify_all()
            return Resp.json({"ok": True})


# --------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class MailMessage:
    """One accepted mail, parsed; `login` is the AUTH user, if the client logged in.

    `body` is the text/plain part (else the HTML one) with "\n" line ends and no
    trailing newline.
    """

    subject: str
    body: str
    from_: str
    to: str
    envelope_from: str
    envelope_to: tuple[str, ...]
    login: str | None
    raw: bytes


def _parse_mail(envelope: Envelope, session: Session) -> MailMessage:
    raw = envelope.original_content or envelope.content or b""
    assert isinstance(raw, bytes)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    part = parsed.get_body(preferencelist=("plain", "html"))
    auth = session.auth_data
    return MailMessage(
        subject=str(parsed.get("Subject", "")),
        body=_normalise_text(part.get_content()) if part is not None else "",
        from_=str(parsed.get("From", "")),
        to=str(parsed.get("To", "")),
        envelope_from=envelope.mail_from or "",
        envelope_to=tuple(envelope.rcpt_tos),
        login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
        raw=raw,
    )


def _normalise_text(text: str) -> str:
    # SMTP carries CRLF line ends and apprise ends the text with one; undo both so
    # tests can compare against the body they passed to notify().
    return text.replace("\r\n", "\n").removesuffix("\n")


def _free_port() -> int:
    # aiosmtpd's Controller probes its own port after binding, so it cannot take
    # port 0; take one from the kernel and hand it over (retried on a lost race).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


class SmtpServer:
    """An aiosmtpd server on 127.0.0.1 that accepts any AUTH PLAIN/LOGIN over plain text.

    `.logins` keeps the (user, password) pairs the server was given, so a test
    can prove a secret reached the one place it belongs before checking that it
    leaked nowhere else.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._messages: list[MailMessage] = []
        self._logins: list[tuple[str, str]] = []
        self._fail_remaining = 0
        self._fail_reply = ""
        self._controller: Controller | None = None

    def start(self, attempts: int = 5) -> Self:
        # aiosmtpd logs every SMTP line and a deprecation WARNING on each login to
        # "mail.log" in this process; that is the fake talking, not the code under
        # test, and it would pollute caplog-based assertions.
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        for attempt in range(attempts):
            controller = self._make_controller(_free_port())
            try:
                controller.start()
            except OSError:
                if attempt == attempts - 1:
                    raise
                continue
            self._controller = controller
            break
        return self

    def _make_controller(self, port: int) -> Controller:
        return Controller(
            _MailHandler(self), hostname=LOOPBACK, port=port,
            server_hostname="localhost",  # skips getfqdn(), which can stall on DNS
            authenticator=self.authenticate,
            auth_require_tls=False,  # apprise logs in over plain text with mode=insecure
            auth_required=False,
        )

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("server is not running")
        return int(self._controller.port)

    def apprise_url(self, to: str = "ops@example.com", *, user: str | None = None,
                    password: str | None = None,
                    sender: str = "creditwatch@example.com") -> str:
        """A mailto:// URL that apprise 2.3.0 delivers here, plain text, no TLS.

        mailto:// (not mailtos://) already means mode=insecure; it is spelled out
        so the URL still works if a default changes. `smtp=` pins the server so
        apprise's provider templates (Gmail, Outlook, ...) never rewrite it.
        """
        credentials = ""
        if user is not None:
            credentials = quote(user, safe="")
            if password is not None:
                credentials += ":" + quote(password, safe="")
            credentials += "@"
        query = urlencode({"smtp": LOOPBACK, "mode": "insecure", "from": sender, "to": to,
                           "format": "text"})
        return f"mailto://{credentials}{LOOPBACK}:{self.port}?{query}"

    def fail_next(self, n: int, reply: str = "451 4.3.0 Try again later") -> None:
        """Refuse the next `n` messages at DATA with `reply` (4xx: transient)."""
        with self._lock:
            self._fail_remaining, self._fail_reply = n, reply

    @property
    def messages(self) -> list[MailMessage]:
        with self._lock:
            return list(self._messages)

    @property
    def logins(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._logins)

    def wait_for(self, n: int, timeout: float = 5.0) -> list[MailMessage]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= n, timeout):
                raise TimeoutError(f"expected {n} mails, got {len(self._messages)}")
            return list(self._messages)

    # aiosmtpd calls these two from its own event-loop thread.
    def authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            with self._lock:
                self._logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True, auth_data=auth_data)

    def accept(self, envelope: Envelope, session: Session) -> str:
        """The SMTP reply to DATA: 250, or the scripted refusal."""
        with self._changed:
            if self._fail_remaining > 0:
                self._fail_remaining -= 1
                return self._fail_reply
            self._messages.append(_parse_mail(envelope, session))
            self._changed.notify_all()
        return "250 OK"


class _MailHandler:
    """aiosmtpd's handler; separate from SmtpServer because aiosmtpd inspects every
    attribute of its handler, which would trip SmtpServer's properties."""

    def __init__(self, owner: SmtpServer) -> None:
        self._owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return self._owner.accept(envelope, session)


# --------------------------------------------------------------------------- helpers


def write_settings(directory: Path, text: str, name: str = "settings.toml") -> Path:
    """Write a settings file; the text is dedented so tests can indent their TOML."""
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def make_settings(tmp_path: Path, api: FakeOpenRouter, *, channels: Mapping[str, str] | None = None,
                  rules: str = "", timeout: str = "1s", repeat: str | None = None,
                  alerts_extra: str = "", extra: str = "", name: str = "settings.toml") -> Path:
    """A settings file for the end-to-end tests: the fake API, the test's own SQLite
    database, a 1 s interval, the given channels and rules (TOML text, any indent)."""
    chans = "".join(f'\n[[channels]]\nname = "{n}"\nurl = "{u}"\n' for n, u in (channels or {}).items())
    alerts = f'[alerts]\nrepeat_interval = "{repeat}"\n{alerts_extra}\n' if repeat is not None else ""
    text = (
        f'[openrouter]\nbase_url = "{api.base_url}"\ntimeout = "{timeout}"\n\n'
        f'[schedule]\ninterval = "1s"\n\n'
        f'[database]\nurl = "sqlite:///{tmp_path}/cw.db"\n\n'
        f"{alerts}{textwrap.dedent(extra)}\n{chans}\n{textwrap.dedent(rules)}"
    )
    return write_settings(tmp_path, text, name=name)

