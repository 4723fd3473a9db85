"""The HTTP side of `run` on `[server] listen`: /healthz, /metrics (and the status page).

It runs in daemon threads of its own and only reads what the ticks published (a snapshot
swapped in whole, a health record), so a scrape never waits for a tick and a tick never
waits for a scrape. Every request is bounded: a client that connects and goes silent is
dropped after a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker import procs

log = logging.getLogger("creditwatch.server")
READ_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Page:
    status: int
    content_type: str
    body: bytes


Route = Callable[[str], Page]  # the request's query string -> the answer


def text(status: int, body: str) -> Page:
    return Page(status, "text/plain; charset=utf-8", (body + "\n").encode())


NOT_FOUND = text(404, "not found: try /, /healthz or /metrics")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT  # per socket operation: a silent client is dropped
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        route = self.server.routes.get(path)
        try:
            page = route(query) if route is not None else NOT_FOUND
        except Exception as err:  # noqa: BLE001 - a broken page must not take the server down
            log.error("the %s page failed: %s", path, type(err).__name__)
            page = text(500, "internal error")
        self._answer(page)

    def do_HEAD(self) -> None:
        self.do_GET()

    def _answer(self, page: Page) -> None:
        self.send_response(page.status)
        self.send_header("Content-Type", page.content_type)
        self.send_header("Content-Length", str(len(page.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        if self.command != "HEAD":
            self.wfile.write(page.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s would drown the tick lines


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], routes: dict[str, Route]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.routes = routes

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            procs.trim_malloc()  # the answer's garbage (a 30-day page is 1 MB) goes back at once


class Server:
    """Serves `routes` on `address` until `close`."""

    def __init__(self, address: tuple[str, int], routes: dict[str, Route]) -> None:
        self._httpd = _Server(address, routes)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        daemon=True, name="cw-server")

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> Server:
        self._thread.start()
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._httpd.shutdown()
            self._httpd.server_close()
        self._thread.join(2.0)
