"""The demo's outside world, on loopback: a simulated OpenRouter account that plays a scripted
story, and the channel that receives creditwatch's notifications.

One HTTP server in a daemon thread answers
- `GET /api/v1/credits` and `GET /api/v1/keys` as OpenRouter does (bearer key checked), from
  the story: each answer to /credits plays the next beat (a balance, or a 503 during the
  outage); past the last beat the balance stays where the story left it;
- `POST /notify`, apprise's `json://` target: each notification is handed to `on_message`.

Nothing here opens a connection to anywhere: the server binds 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
API_PREFIX = "/api/v1"
NOTIFY_PATH = "/notify"
MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Beat:
    """One answer of the story: the account's balance (None: the API is down, 503), what
    the CI key has left of its limit, and the line that announces a new chapter."""

    total_credits: float | None
    total_usage: float
    ci_usage: float
    ci_limit: float
    chapter: str = ""


def story() -> list[Beat]:
    """The scripted account: a steady spend, a burst (a runaway batch job on the CI key), a
    quiet stretch while the balance stays low, an outage, then a top-up and a higher CI limit."""
    beats: list[Beat] = []
    credits, usage, ci = 50.0, 20.0, 3.0

    def play(n: int, spend: float, ci_spend: float, chapter: str, limit: float = 10.0,
             down: bool = False) -> None:
        nonlocal usage, ci
        for i in range(n):
            if not down:
                usage, ci = round(usage + spend, 6), round(ci + ci_spend, 6)
            beats.append(Beat(None if down else credits, usage, ci, limit, chapter if i == 0 else ""))

    play(6, 0.2, 0.05, "a steady spend: about $0.20 a second (the story runs ~3,600x fast)")
    play(8, 2.0, 0.8, "a burst of spend: a runaway batch job on the CI key burns $2 a second")
    play(14, 0.05, 0.0, "the job is stopped; the balance stays low (a reminder is due while it does)")
    # Each failing tick asks up to 3 times (the fetch retries a 5xx): 12 answers are 4+ ticks.
    play(12, 0.0, 0.0, "an outage: the API answers 503 Service Unavailable", down=True)
    play(2, 0.05, 0.0, "the API is back")
    credits = 100.0
    play(1, 0.05, 0.0, "a top-up of $50, and the CI key's limit raised to $50", limit=50.0)
    play(1, 0.05, 0.0, "", limit=50.0)
    return beats


def key_hash(name: str) -> str:
    return hashlib.sha256(f"creditwatch-demo:{name}".encode()).hexdigest()


def _key(name: str, usage: float, limit: float | None) -> dict[str, Any]:
    """One item of GET /keys, every documented field set; the label is masked as OpenRouter's is."""
    digest = key_hash(name)
    return {
        "hash": digest, "name": name, "label": f"sk-or-v1-{digest[:3]}...{digest[-3:]}", "disabled": False,
        "limit": limit, "limit_remaining": None if limit is None else round(max(0.0, limit - usage), 6),
        "limit_reset": None, "include_byok_in_limit": False, "usage": usage, "usage_daily": usage,
        "usage_weekly": usage, "usage_monthly": usage, "byok_usage": 0.0, "byok_usage_daily": 0.0,
        "byok_usage_weekly": 0.0, "byok_usage_monthly": 0.0, "created_at": "2026-11-01T09:00:00Z",
        "updated_at": "2026-11-01T09:00:00Z", "expires_at": None,
    }


class Account:
    """The story's state: the beat in play, advanced by each /credits request."""

    def __init__(self, beats: list[Beat], on_chapter: Callable[[str], None]) -> None:
        if not beats or beats[-1].total_credits is None:
            msg = "a story must end with the API up"
            raise ValueError(msg)
        self._beats = beats
        self._on_chapter = on_chapter
        self._next = 0
        self._current = beats[0]
        self._lock = threading.Lock()

    @property
    def finished(self) -> bool:
        """Every beat has been played."""
        with self._lock:
            return self._next >= len(self._beats)

    def credits(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if self._next < len(self._beats):
                self._current = self._beats[self._next]
                self._next += 1
                chapter = self._current.chapter
            else:
                chapter = ""
            beat = self._current
        if chapter:
            self._on_chapter(chapter)
        if beat.total_credits is None:
            return 503, {"error": {"message": "Service Unavailable", "code": 503}}
        return 200, {"data": {"total_credits": beat.total_credits, "total_usage": beat.total_usage}}

    def keys(self, offset: int) -> tuple[int, dict[str, Any]]:
        with self._lock:
            beat = self._current
        if beat.total_credits is None:
            return 503, {"error": {"message": "Service Unavailable", "code": 503}}
        web = round(max(0.0, beat.total_usage - 20.0 - beat.ci_usage) * 0.6, 6)
        items = [_key("ci-runner", beat.ci_usage, beat.ci_limit), _key("web-app", web, None)]
        return 200, {"data": items[offset:offset + 100]}


Sink = Callable[[str, str, str], None]  # title, body, apprise notify type


class DemoWorld:
    """The loopback server: the simulated account at `base_url`, the channel at `channel_url`."""

    def __init__(self, api_key: str, account: Account, on_message: Sink) -> None:
        self.api_key = api_key
        self.account = account
        self.on_message = on_message
        self._httpd = _Server(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        daemon=True, name="cw-demo-api")

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{API_PREFIX}"

    @property
    def channel_url(self) -> str:
        return f"json://{LOOPBACK}:{self.port}{NOTIFY_PATH}"

    def start(self) -> DemoWorld:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(2.0)

    def answer_get(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(path)
        if authorization != f"Bearer {self.api_key}":
            return 401, {"error": {"message": "No auth credentials found", "code": 401}}
        if parts.path == f"{API_PREFIX}/credits":
            return self.account.credits()
        if parts.path == f"{API_PREFIX}/keys":
            offset = parse_qs(parts.query).get("offset", ["0"])[0]
            return self.account.keys(int(offset) if offset.isdigit() else 0)
        return 404, {"error": {"message": "Not Found", "code": 404}}

    def answer_post(self, path: str, body: bytes) -> int:
        if urlsplit(path).path != NOTIFY_PATH:
            return 404
        try:
            doc = json.loads(body)
            fields = [str(doc.get(name, "")) for name in ("title", "message", "type")]
        except (ValueError, AttributeError):
            return 400
        self.on_message(*fields)
        return 200


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 5.0  # a silent client is dropped

    def do_GET(self) -> None:
        status, doc = self.server.world.answer_get(self.path, self.headers.get("Authorization"))
        self._send(status, json.dumps(doc).encode(), "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self._send(413, b"", "text/plain")
            return
        status = self.server.world.answer_post(self.path, self.rfile.read(length))
        self._send(status, b"", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the demo prints its story, not an access log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, world: DemoWorld) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.world = world
