"""The heartbeat (healthchecks.io style) against real loopback servers: one GET per ping to
the URL or URL/fail, bounded in every phase, nothing left behind, never a redirect or a
proxy, and the URL (a secret) in no result and masked by the redactor."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from fakes import CaptureServer, FakeOpenRouter, Resp
from hostile import RawServer, silent, sockets_to, trickle_headers

from worker.heartbeat import TIMEOUT, Heartbeat, HeartbeatResult, heartbeat_secrets, shown_url
from worker.redact import Redactor
from worker.settings import parse_settings

TOKEN = "5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278"  # a healthchecks.io check's UUID
SHORT = 1.0  # seconds: the tests' bound in place of the contract's 5 s
SLACK = 1.5  # a loaded 2-core machine


@pytest.fixture
def receiver() -> Iterator[CaptureServer]:
    """Records every request and answers 200, whatever the path."""
    with CaptureServer() as server:
        yield server


def assert_safe(result: HeartbeatResult) -> None:
    assert TOKEN not in result.message and "127.0.0.1" not in result.message, result
    assert result.message.isprintable(), result


def test_a_ping_is_one_get_to_the_url(receiver: CaptureServer) -> None:
    beat = Heartbeat(f"{receiver.origin}/{TOKEN}")

    first, second = beat.ping(ok=True), beat.ping(ok=True)

    assert [(r.method, r.path) for r in receiver.requests] == [("GET", f"/{TOKEN}")] * 2
    assert first.ok and first.status == 200 and second.ok
    assert first.message == "heartbeat sent (HTTP 200)"
    assert_safe(first)


@pytest.mark.parametrize("suffix", ["", "/"], ids=["bare", "trailing-slash"])
def test_a_failed_tick_pings_url_slash_fail(receiver: CaptureServer, suffix: str) -> None:
    result = Heartbeat(f"{receiver.origin}/ping/{TOKEN}{suffix}").ping(ok=False)

    [request] = receiver.requests
    assert request.path == f"/ping/{TOKEN}/fail"
    assert result.ok and result.message == "heartbeat /fail sent (HTTP 200)"
    assert_safe(result)


def test_a_refusal_is_reported_without_the_url(fake_api: FakeOpenRouter) -> None:
    result = Heartbeat(f"{fake_api.origin}/{TOKEN}").ping(ok=True)  # the fake answers 404 there

    assert not result.ok and result.status == 404
    assert result.message == "heartbeat not sent: HTTP 404 from the heartbeat URL"
    assert_safe(result)


def test_a_redirect_is_not_followed(fake_api: FakeOpenRouter, receiver: CaptureServer) -> None:
    fake_api.enqueue(Resp.redirect(f"{receiver.origin}/{TOKEN}"))

    result = Heartbeat(f"{fake_api.origin}{fake_api.CREDITS_PATH}").ping(ok=True)

    assert not result.ok and result.status == 302 and "redirect" in result.message
    assert receiver.count == 0, "the ping followed the redirect"


def test_proxy_variables_are_ignored(receiver: CaptureServer, fake_api: FakeOpenRouter,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The secret URL must go where it says, never through a proxy from the environment.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, fake_api.origin)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    result = Heartbeat(f"{receiver.origin}/{TOKEN}").ping(ok=True)

    assert result.ok and receiver.count == 1
    assert fake_api.count == 0, "the ping went through the proxy"


@pytest.mark.parametrize("behaviour", [trickle_headers(0.2), silent], ids=["trickling-headers", "silent"])
def test_a_stuck_receiver_costs_at_most_the_timeout_and_leaves_nothing(behaviour: object) -> None:
    with RawServer(behaviour) as server:  # type: ignore[arg-type]
        url = f"http://127.0.0.1:{server.port}/{TOKEN}"
        Heartbeat(url, timeout=0.3).ping(ok=True)  # starts httpwatch's one watchdog thread
        threads = set(threading.enumerate())
        started = time.monotonic()

        result = Heartbeat(url, timeout=SHORT).ping(ok=False)

        elapsed = time.monotonic() - started
        assert not result.ok and result.message == f"heartbeat /fail not sent: timed out after {SHORT:g}s"
        assert elapsed < SHORT + SLACK, elapsed
        assert sockets_to(server.port) == 0, "a socket to the receiver is still open"
        _wait(lambda: server.open == 0)  # the receiver saw the connection close
    assert_safe(result)
    assert set(threading.enumerate()) <= threads, "the ping left a thread behind"


def test_an_unreachable_url_fails_fast_and_safely() -> None:
    with RawServer(silent) as server:
        port = server.port  # a port that was just in use and is now closed

    result = Heartbeat(f"http://127.0.0.1:{port}/{TOKEN}", timeout=SHORT).ping(ok=True)

    assert not result.ok and result.status is None
    assert result.message == "heartbeat not sent: could not connect to the heartbeat URL's host"
    assert result.seconds < SHORT + SLACK
    assert_safe(result)


@pytest.mark.parametrize("url", [f"http://[::1/{TOKEN}", f"gopher://127.0.0.1/{TOKEN}", TOKEN])
def test_a_malformed_url_never_raises_nor_echoes(url: str) -> None:
    result = Heartbeat(url, timeout=SHORT).ping(ok=True)

    assert not result.ok
    assert_safe(result)


def test_the_default_bound_is_the_contracts_five_seconds() -> None:
    assert TIMEOUT == 5.0
    assert Heartbeat("https://hc-ping.com/x").timeout == 5.0


# --------------------------------------------------------------------------- the URL is a secret


def test_shown_url_keeps_only_scheme_and_host() -> None:
    assert shown_url(f"https://hc-ping.com/{TOKEN}") == "https://hc-ping.com/***"
    assert shown_url(f"http://user:pw@hc.example.com:8000/ping/{TOKEN}") == "http://***@hc.example.com:8000/***"
    assert shown_url("https://hc.example.com") == "https://hc.example.com"


def test_the_redactor_masks_the_heartbeat_url_and_nothing_ordinary() -> None:
    url = "https://hc-ping.com/Kx3b9QzLm0pWv7RtY2sA1Q/creditwatch"  # a ping key and a slug
    settings = parse_settings('[heartbeat]\nurl = "${HEARTBEAT_URL}"\n', {"HEARTBEAT_URL": url})
    redact = Redactor(heartbeat_secrets(settings))

    line = redact(f"GET {url}/fail failed; key Kx3b9QzLm0pWv7RtY2sA1Q; /var/lib/creditwatch ping ok")

    assert "Kx3b9QzLm0pWv7RtY2sA1Q" not in line
    assert "/var/lib/creditwatch ping ok" in line, line
    assert heartbeat_secrets(parse_settings("", {})) == []


def test_a_path_token_is_masked_wherever_it_appears() -> None:
    settings = parse_settings(f'[heartbeat]\nurl = "https://hc-ping.com/{TOKEN}"\n', {})

    line = Redactor(heartbeat_secrets(settings))(f"check {TOKEN} is down; see hc-ping.com")

    assert line == "check *** is down; see hc-ping.com"


def _wait(done: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)
