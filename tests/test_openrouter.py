"""fetch_credits over real sockets against the fake OpenRouter.

Each failure the API (or something in front of it) can produce must come back
as a classified FetchOutcome within the wall-clock timeout, never as an
exception, never with the key in its message, and never sent anywhere but the
configured endpoint.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from fakes import CaptureServer, FakeOpenRouter, Resp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.domain import FetchKind, FetchOutcome
from worker.openrouter import Endpoint, fetch_credits, new_session

KEY = "sk-or-v1-0123456789abcdef0123456789abcdef"


def fetch(api: FakeOpenRouter, timeout: float = 5.0, key: str = KEY,
          base_url: str | None = None) -> tuple[FetchOutcome, float]:
    """One fetch with a fresh session, as the tick makes it; returns (outcome, seconds)."""
    session = new_session()
    started = time.monotonic()
    try:
        outcome = fetch_credits(session, Endpoint(base_url or api.base_url, key, timeout))
    finally:
        session.close()
    return outcome, time.monotonic() - started


def assert_no_key(outcome: FetchOutcome) -> None:
    assert KEY not in outcome.message
    assert KEY[10:30] not in outcome.message


# --------------------------------------------------------------------------- success


def test_ok_returns_both_numbers(fake_api: FakeOpenRouter) -> None:
    fake_api.set_balance(150.5, 42.25)

    outcome, _ = fetch(fake_api)

    assert outcome.kind is FetchKind.OK and outcome.ok
    assert (outcome.total_credits, outcome.total_usage) == (150.5, 42.25)
    assert outcome.attempts == 1
    [request] = fake_api.requests
    assert (request.method, request.path) == ("GET", "/api/v1/credits")


def test_integers_are_accepted_as_floats(fake_api: FakeOpenRouter) -> None:
    fake_api.set_balance(100, 0)

    outcome, _ = fetch(fake_api)

    assert outcome.ok
    assert (outcome.total_credits, outcome.total_usage) == (100.0, 0.0)
    assert isinstance(outcome.total_credits, float)


def test_extra_fields_are_ignored(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.json({"data": {"total_credits": 5, "total_usage": 1.5,
                                             "extra": {"x": [1, None]}}, "meta": "x"}))
    outcome, _ = fetch(fake_api)
    assert outcome.ok and (outcome.total_credits, outcome.total_usage) == (5.0, 1.5)


def test_content_type_with_charset_is_json(fake_api: FakeOpenRouter) -> None:
    body = json.dumps({"data": {"total_credits": 3, "total_usage": 1}}).encode()
    fake_api.set_default(Resp(body=body, content_type="application/json; charset=utf-8"))
    outcome, _ = fetch(fake_api)
    assert outcome.ok


def test_authorization_header_is_exactly_bearer_key(fake_api: FakeOpenRouter) -> None:
    outcome, _ = fetch(fake_api)

    assert outcome.ok
    [request] = fake_api.requests
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert [k for k in request.headers if k.lower() == "authorization"] == ["Authorization"]


def test_a_fake_that_checks_the_key_accepts_it() -> None:
    with FakeOpenRouter(api_key=KEY) as api:
        good, _ = fetch(api)
        bad, _ = fetch(api, key="sk-or-v1-wrong")
    assert good.ok
    assert bad.kind is FetchKind.AUTH
    assert "sk-or-v1-wrong" not in bad.message


# --------------------------------------------------------------------------- status codes


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried(fake_api: FakeOpenRouter, status: int) -> None:
    fake_api.set_default(Resp.json({"error": {"message": "No auth credentials found",
                                              "code": status}}, status=status))

    outcome, elapsed = fetch(fake_api)

    assert outcome.kind is FetchKind.AUTH
    assert fake_api.count == 1
    assert outcome.attempts == 1
    assert elapsed < 1.0
    assert str(status) in outcome.message
    assert "invalid" in outcome.message and "management key" in outcome.message
    assert_no_key(outcome)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient_and_retried_twice(fake_api: FakeOpenRouter,
                                                       status: int) -> None:
    fake_api.set_default(Resp.json({"error": {"message": "upstream"}}, status=status))

    outcome, elapsed = fetch(fake_api, timeout=5.0)

    assert outcome.kind is FetchKind.TRANSIENT
    assert fake_api.count == 3  # one try and at most two retries
    assert outcome.attempts == 3
    assert elapsed < 5.0
    assert str(status) in outcome.message
    assert_no_key(outcome)


def test_a_transient_error_then_success_is_ok(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp.status_only(502))
    fake_api.set_balance(10, 2)

    outcome, _ = fetch(fake_api)

    assert outcome.ok and (outcome.total_credits, outcome.total_usage) == (10.0, 2.0)
    assert outcome.attempts == 2
    assert fake_api.count == 2


def test_retries_stop_when_the_timeout_would_be_passed(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.status_only(503))

    outcome, elapsed = fetch(fake_api, timeout=1.0)

    assert outcome.kind is FetchKind.TRANSIENT
    assert elapsed < 1.5
    assert 1 <= fake_api.count <= 2


def test_retry_after_inside_the_budget_is_honoured(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp.status_only(429, headers={"Retry-After": "0.2"}))

    outcome, _ = fetch(fake_api, timeout=5.0)

    assert outcome.ok
    first, second = fake_api.requests
    gap = second.at - first.at
    assert 0.18 <= gap < 0.45, gap  # the server's 0.2 s, not the default backoff of 0.5 s


def test_retry_after_beyond_the_budget_is_not_waited(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.status_only(429, headers={"Retry-After": "3600"}))

    outcome, elapsed = fetch(fake_api, timeout=5.0)

    assert outcome.kind is FetchKind.TRANSIENT
    assert elapsed < 1.0
    assert fake_api.count == 1
    assert "429" in outcome.message


def test_an_http_date_retry_after_far_away_is_not_waited(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.status_only(
        429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}))
    outcome, elapsed = fetch(fake_api, timeout=5.0)
    assert outcome.kind is FetchKind.TRANSIENT and elapsed < 1.0 and fake_api.count == 1


@pytest.mark.parametrize("status", [400, 404, 405, 410, 422])
def test_other_client_errors_are_bad_responses(fake_api: FakeOpenRouter, status: int) -> None:
    fake_api.set_default(Resp.json({"error": {"message": "nope", "code": status}}, status=status))

    outcome, _ = fetch(fake_api)

    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert fake_api.count == 1
    assert str(status) in outcome.message


def test_a_wrong_base_url_is_a_bad_response(fake_api: FakeOpenRouter) -> None:
    outcome, _ = fetch(fake_api, base_url=f"{fake_api.origin}/api/v2")

    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert "404" in outcome.message


def test_nothing_listening_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = new_session()
    started = time.monotonic()
    outcome = fetch_credits(session, Endpoint(f"http://127.0.0.1:{port}/api/v1", KEY, 2.0))
    assert outcome.kind is FetchKind.TRANSIENT
    assert time.monotonic() - started < 2.5
    assert_no_key(outcome)


# --------------------------------------------------------------------------- timeouts


def test_a_hanging_server_is_transient_within_the_timeout(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp(hang=True))

    outcome, elapsed = fetch(fake_api, timeout=1.0)

    assert outcome.kind is FetchKind.TRANSIENT
    assert elapsed < 1.5, elapsed
    assert "timed out" in outcome.message


def test_a_slow_status_line_is_transient_within_the_timeout(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.credits(1, 0, delay=3.0))

    outcome, elapsed = fetch(fake_api, timeout=1.0)

    assert outcome.kind is FetchKind.TRANSIENT
    assert elapsed < 1.5, elapsed


def test_a_trickling_body_is_cut_at_the_wall_clock_timeout(fake_api: FakeOpenRouter) -> None:
    # One byte every 0.3 s never trips a per-read timeout; the body would take minutes.
    body = json.dumps({"data": {"total_credits": 100, "total_usage": 1},
                       "padding": "x" * 400}).encode()
    fake_api.set_default(Resp(body=body, content_type="application/json", trickle=0.3))

    outcome, elapsed = fetch(fake_api, timeout=1.0)

    assert outcome.kind is FetchKind.TRANSIENT
    assert elapsed < 1.5, elapsed


@pytest.mark.parametrize("status", [401, 404, 500])
def test_an_error_status_with_a_trickling_body_is_cut_at_the_timeout(
        fake_api: FakeOpenRouter, status: int) -> None:
    fake_api.set_default(Resp(status=status, body=b"x" * 40, content_type="text/plain",
                              trickle=0.3))

    outcome, elapsed = fetch(fake_api, timeout=1.0)

    assert not outcome.ok
    assert elapsed < 1.5, elapsed


def test_a_body_cut_short_is_transient(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.credits(100, 1, close_mid_body=True))

    outcome, elapsed = fetch(fake_api, timeout=1.0)

    assert outcome.kind is FetchKind.TRANSIENT
    assert elapsed < 1.5
    assert fake_api.count >= 1


def test_a_body_cut_short_once_then_ok(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp.credits(100, 1, close_mid_body=True))
    outcome, _ = fetch(fake_api, timeout=5.0)
    assert outcome.ok and fake_api.count == 2


# --------------------------------------------------------------------------- bodies


def test_an_html_page_is_a_bad_response(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.html("<html><body><h1>Sign in to the Wi-Fi</h1></body></html>"))

    outcome, _ = fetch(fake_api)

    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert fake_api.count == 1
    assert "Wi-Fi" not in outcome.message  # bodies are never echoed


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", None])
def test_json_with_the_wrong_content_type_is_a_bad_response(fake_api: FakeOpenRouter,
                                                            content_type: str | None) -> None:
    body = json.dumps({"data": {"total_credits": 100, "total_usage": 1}}).encode()
    fake_api.set_default(Resp(body=body, content_type=content_type))

    outcome, _ = fetch(fake_api)

    assert outcome.kind is FetchKind.BAD_RESPONSE


RAW_BAD_BODIES = {
    "nan": '{"data": {"total_credits": NaN, "total_usage": 1}}',
    "infinity": '{"data": {"total_credits": 100, "total_usage": Infinity}}',
    "minus-infinity": '{"data": {"total_credits": -Infinity, "total_usage": 1}}',
    "1e309": '{"data": {"total_credits": 1e309, "total_usage": 1}}',
    "-1e309": '{"data": {"total_credits": 100, "total_usage": -1e309}}',
    "huge-int": '{"data": {"total_credits": 1' + "0" * 400 + ', "total_usage": 1}}',
    "negative-credits": '{"data": {"total_credits": -5, "total_usage": 1}}',
    "negative-usage": '{"data": {"total_credits": 5, "total_usage": -0.01}}',
    "string-numbers": '{"data": {"total_credits": "100", "total_usage": "1"}}',
    "null": '{"data": {"total_credits": null, "total_usage": 1}}',
    "true": '{"data": {"total_credits": true, "total_usage": 1}}',
    "false": '{"data": {"total_credits": 100, "total_usage": false}}',
    "missing-usage": '{"data": {"total_credits": 100}}',
    "missing-data": '{"total_credits": 100, "total_usage": 1}',
    "data-null": '{"data": null}',
    "data-list": '{"data": [100, 1]}',
    "data-string": '{"data": "100"}',
    "nested-junk": '{"data": {"total_credits": {"value": 100}, "total_usage": [1]}}',
    "top-level-list": '[{"data": {"total_credits": 100, "total_usage": 1}}]',
    "top-level-number": "42",
    "top-level-null": "null",
    "empty": "",
    "truncated": '{"data": {"total_credits": 100, "total_us',
    "trailing-garbage": '{"data": {"total_credits": 100, "total_usage": 1}} xyz',
    "deep-nesting": '{"data": ' + "[" * 20000 + "]" * 20000 + "}",
    "not-utf8": b'{"data": {"total_credits": 100, "total_usage": 1, "x": "\xff\xfe"}}',
    "huge-body": '{"data": {"total_credits": 100, "total_usage": 1}, "pad": "'
                 + "x" * (70 * 1024) + '"}',
}


@pytest.mark.parametrize("name", list(RAW_BAD_BODIES))
def test_bodies_that_are_not_finite_non_negative_numbers_are_bad(fake_api: FakeOpenRouter,
                                                                 name: str) -> None:
    raw = RAW_BAD_BODIES[name]
    body = raw if isinstance(raw, bytes) else raw.encode()
    fake_api.set_default(Resp(body=body, content_type="application/json"))

    outcome, _ = fetch(fake_api)

    assert outcome.kind is FetchKind.BAD_RESPONSE, (name, outcome)
    assert outcome.total_credits is None and outcome.total_usage is None
    assert fake_api.count == 1  # a bad body is not retried


def test_a_huge_body_is_refused_without_reading_it_all(fake_api: FakeOpenRouter) -> None:
    body = b'{"data": {"total_credits": 100, "total_usage": 1}, "pad": "' + b"x" * (8 << 20) + b'"}'
    fake_api.set_default(Resp(body=body, content_type="application/json"))

    outcome, elapsed = fetch(fake_api)

    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert "larger" in outcome.message
    assert elapsed < 2.0


def test_a_body_just_under_the_cap_is_read(fake_api: FakeOpenRouter) -> None:
    head = b'{"data": {"total_credits": 100, "total_usage": 1}, "pad": "'
    body = head + b"x" * (60 * 1024) + b'"}'
    fake_api.set_default(Resp(body=body, content_type="application/json"))
    outcome, _ = fetch(fake_api)
    assert outcome.ok


# --------------------------------------------------------------------------- where the key goes


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(fake_api: FakeOpenRouter, capture_server: CaptureServer,
                                    code: int) -> None:
    fake_api.set_default(Resp.redirect(capture_server.url, code=code))

    outcome, _ = fetch(fake_api)

    assert capture_server.count == 0
    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert str(code) in outcome.message
    assert fake_api.count == 1


def test_a_redirect_with_a_trickling_body_is_cut_at_the_timeout(
        fake_api: FakeOpenRouter, capture_server: CaptureServer) -> None:
    # requests reads a 3xx body inside send(), even with stream=True and
    # allow_redirects=False: that read must be bounded by the deadline too.
    fake_api.set_default(Resp(status=302, headers={"Location": capture_server.url},
                              body=b"x" * 20, content_type="text/plain", trickle=0.3))

    outcome, elapsed = fetch(fake_api, timeout=1.0)

    assert elapsed < 1.5, elapsed
    assert not outcome.ok
    assert capture_server.count == 0


def test_a_same_origin_redirect_is_not_followed_either(fake_api: FakeOpenRouter) -> None:
    # Same host and port: requests would keep the Authorization header on this one.
    fake_api.set_default(Resp.redirect(f"{fake_api.origin}/elsewhere/credits"))

    outcome, _ = fetch(fake_api)

    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert fake_api.count == 1


@pytest.fixture
def dead_proxy() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now


def test_proxy_variables_are_ignored(fake_api: FakeOpenRouter, dead_proxy: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy",
                 "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    # Control: a session that trusts the environment really would use the dead proxy.
    with requests.Session() as trusting, pytest.raises(requests.exceptions.ProxyError):
        trusting.get(fake_api.credits_url, timeout=2)
    assert fake_api.count == 0

    outcome, _ = fetch(fake_api)

    assert outcome.ok
    assert fake_api.count == 1


def test_netrc_is_ignored(fake_api: FakeOpenRouter, tmp_path: Any,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))

    outcome, _ = fetch(fake_api)

    assert outcome.ok
    assert fake_api.requests[0].header("Authorization") == f"Bearer {KEY}"


def test_the_session_does_not_trust_the_environment() -> None:
    session = new_session()
    assert session.trust_env is False
    session.close()


ECHOES = {
    "401-json": Resp.json({"error": {"message": f"Invalid key Bearer {KEY}"}}, status=401),
    "403-text": Resp(status=403, body=f"forbidden for {KEY}"),
    "400-json": Resp.json({"error": {"message": f"bad header Bearer {KEY}"}}, status=400),
    "500-text": Resp(status=500, body=f"Traceback: Authorization: Bearer {KEY}"),
    "html": Resp.html(f"<p>Your key {KEY} is wrong</p>"),
    "key-as-balance": Resp.json({"data": {"total_credits": KEY, "total_usage": KEY}}),
    "key-as-field-name": Resp.json({"data": {KEY: 1}}),
    "key-in-content-type": Resp(body=b"{}", content_type=f"text/{KEY}"),
    "key-in-a-header": Resp.json({"data": {}}, headers={"X-Key": KEY}),
    "redirect-with-key": Resp.redirect(f"http://127.0.0.1:1/?key={KEY}"),
}


@pytest.mark.parametrize("name", list(ECHOES))
def test_the_outcome_message_never_carries_the_key(fake_api: FakeOpenRouter, name: str) -> None:
    fake_api.set_default(ECHOES[name])

    outcome, _ = fetch(fake_api, timeout=1.0)

    assert not outcome.ok
    assert_no_key(outcome)
    assert "sk-or-" not in outcome.message


# --------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def shared_api() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as server:
        yield server


scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400),
                                                                      max_value=10**400)
           | st.floats() | st.floats(min_value=0, allow_infinity=False) | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)
amounts = scalars | json_values
data_objects = st.fixed_dictionaries(
    {}, optional={"total_credits": amounts, "total_usage": amounts,
                  "other": json_values})
valid_amounts = (st.floats(min_value=0, allow_nan=False, allow_infinity=False)
                 | st.integers(min_value=0, max_value=10**15))
near_valid = st.fixed_dictionaries({"data": st.fixed_dictionaries(
    {"total_credits": valid_amounts | amounts, "total_usage": valid_amounts})})
documents = (near_valid
             | st.fixed_dictionaries({"data": data_objects})
             | st.fixed_dictionaries({"data": json_values})
             | json_values)


def _expected(document: Any) -> tuple[float, float] | None:
    """The oracle: OK iff both amounts are finite, non-bool numbers in [0, 1e12], in a
    document that is JSON at all (NaN or Infinity anywhere makes it not JSON)."""
    try:
        json.dumps(document, allow_nan=False)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        return None
    values = []
    for name in ("total_credits", "total_usage"):
        value = document["data"].get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            number = float(value)
        except OverflowError:
            return None
        if not math.isfinite(number) or not 0 <= number <= 1e12:  # CONTRACT: above 1e12 is bad
            return None
        values.append(number)
    return values[0], values[1]


def _check(api: FakeOpenRouter, body: bytes, expected: tuple[float, float] | None) -> None:
    api.set_default(Resp(body=body, content_type="application/json"))
    outcome, _ = fetch(api, timeout=3.0)  # must not raise
    if expected is None:
        assert outcome.kind is FetchKind.BAD_RESPONSE, (body[:200], outcome)
    else:
        assert outcome.kind is FetchKind.OK, (body[:200], outcome)
        assert (outcome.total_credits, outcome.total_usage) == expected


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(document=documents)
def test_fuzzed_json_documents(shared_api: FakeOpenRouter, document: Any) -> None:
    body = json.dumps(document).encode()  # NaN/Infinity written as Python writes them
    _check(shared_api, body, _expected(document))


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.text(max_size=200).map(lambda t: t.encode("utf-8", errors="surrogatepass"))
       | st.binary(max_size=200))
def test_fuzzed_text_bodies(shared_api: FakeOpenRouter, body: bytes) -> None:
    try:
        document = json.loads(body, parse_constant=lambda c: float("nan"))
    except (ValueError, RecursionError):
        expected = None
    else:
        expected = _expected(document)
    _check(shared_api, body, expected)
