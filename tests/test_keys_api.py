"""The keys API over real sockets against the fake OpenRouter: GET /keys page by page
under one deadline, PATCH /keys/{hash} to disable a key, and parse_keys on its own.

A listing is all or nothing (a partial one would resolve the alerts of the keys it
missed), and no message ever carries a key's full hash.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from fakes import (
    FakeOpenRouter,
    RecordedRequest,
    Resp,
    delayed,
    gzip_encoded,
    key_item,
    keys_page,
    trickled,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.apihttp import MAX_BODY, Retry, request_json
from worker.domain import FetchKind, key_id
from worker.openrouter import (
    MAX_PAGES,
    PAGE_SIZE,
    ApiKey,
    Endpoint,
    KeysOutcome,
    PatchOutcome,
    disable_key,
    fetch_credits,
    fetch_keys,
    new_session,
    parse_keys,
)
from worker.text import escape_controls

KEY = "sk-or-v1-" + "0123456789abcdef" * 4  # shaped like a real key: 64 hex digits
OTHER_KEY = "sk-or-v1-" + "fedcba9876543210" * 4
CANARY = "c0ffee" + "1234567890abcdef" * 3 + "deadbeefca"  # a hash, 64 hex digits
MARGIN = 1.0  # what a loaded 2-core machine may add to a deadline the code promises
KEYS = "/api/v1/keys"
UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}  # what escape_controls escapes


def many(count: int, prefix: str = "key", **kwargs: Any) -> list[dict[str, Any]]:
    return [key_item(f"{prefix}-{i:04d}", **kwargs) for i in range(count)]


def with_fields(item: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`item` with these raw fields set as given (None included)."""
    return item | fields


@pytest.fixture
def api() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter(api_key=KEY) as server:
        yield server


def list_keys(base_url: str, key: str = KEY, timeout: float = 5.0,
              **kwargs: Any) -> tuple[KeysOutcome, float]:
    """One listing with a fresh session, as a tick makes it; (outcome, seconds)."""
    session = new_session()
    started = time.monotonic()
    try:
        outcome = fetch_keys(session, Endpoint(base_url, key, timeout), **kwargs)
    finally:
        session.close()
    return outcome, time.monotonic() - started


def disable(base_url: str, key_hash: str, key: str = KEY, timeout: float = 5.0) -> PatchOutcome:
    session = new_session()
    try:
        return disable_key(session, Endpoint(base_url, key, timeout), key_hash)
    finally:
        session.close()


def names(outcome: KeysOutcome) -> list[str]:
    return [key.name for key in outcome.keys]


def offsets(requests_seen: list[RecordedRequest]) -> list[str]:
    """The `offset` of each GET /keys, in arrival order ("-" when absent)."""
    return [parse_qs(urlsplit(r.path).query).get("offset", ["-"])[0]
            for r in requests_seen if r.method == "GET" and r.path.startswith(KEYS)]


def assert_no_hash(message: str, key_hash: str = CANARY) -> None:
    """Neither the hash nor any 16-character piece of it (in any case) is in the message."""
    lowered = message.lower()
    pieces = {key_hash[i:i + 16].lower() for i in range(len(key_hash) - 15)} or {key_hash.lower()}
    assert not [p for p in pieces if p in lowered], message


# =========================================================================== paging


def test_160_keys_come_from_two_pages_asked_in_order(api: FakeOpenRouter) -> None:
    api.set_keys(many(160, limit=50.0, usage_daily=1.25, limit_reset="monthly"))

    outcome, _ = list_keys(api.base_url)

    assert outcome.kind is FetchKind.OK and outcome.ok, outcome
    assert names(outcome) == [f"key-{i:04d}" for i in range(160)]
    assert (outcome.pages, outcome.attempts, outcome.message) == (2, 2, "")
    assert offsets(api.requests) == ["0", "100"]
    for request in api.requests:
        assert request.header("Authorization") == f"Bearer {KEY}"
        assert "include_disabled" not in request.path
    first = api.keys[0]
    assert outcome.keys[0] == ApiKey(
        id=key_id(first["hash"]), hash=first["hash"], name="key-0000", label=first["label"],
        disabled=False, limit=50.0, limit_remaining=48.75, limit_reset="monthly", usage=1.25,
        usage_daily=1.25, usage_weekly=1.25, usage_monthly=1.25)


@pytest.mark.parametrize(("count", "pages"), [(0, 1), (1, 1), (99, 1), (100, 2), (200, 3),
                                              (201, 3)])
def test_pages_are_asked_until_one_is_short(api: FakeOpenRouter, count: int, pages: int) -> None:
    api.set_keys(many(count))

    outcome, _ = list_keys(api.base_url)

    assert outcome.ok, outcome
    assert len(outcome.keys) == count and outcome.pages == pages
    assert offsets(api.requests) == [str(PAGE_SIZE * p) for p in range(pages)]


def test_disabled_keys_are_skipped(api: FakeOpenRouter) -> None:
    items = many(150)
    for index in range(0, 150, 7):
        items[index]["disabled"] = True
    api.set_keys(items)

    outcome, _ = list_keys(api.base_url)

    enabled = [item["name"] for item in items if not item["disabled"]]
    assert outcome.ok and names(outcome) == enabled
    assert not any(key.disabled for key in outcome.keys)


def test_disabled_items_the_server_lists_anyway_are_dropped_but_fill_their_page(
        api: FakeOpenRouter) -> None:
    # A server that ignores the missing include_disabled: 100 items, 30 disabled, is still
    # a full page, so the next one must be asked for.
    items = many(130)
    for item in items[:30]:
        item["disabled"] = True
    api.script(f"{KEYS}?offset=0", keys_page(items[:100]))
    api.script(f"{KEYS}?offset=100", keys_page(items[100:]))

    outcome, _ = list_keys(api.base_url)

    assert outcome.ok, outcome
    assert names(outcome) == [item["name"] for item in items[30:]]
    assert offsets(api.requests) == ["0", "100"]


def test_a_key_listed_twice_across_pages_is_kept_once(api: FakeOpenRouter) -> None:
    # A key created between two pages pushes the last of page 1 onto page 2.
    items = many(150)
    api.script(f"{KEYS}?offset=100", keys_page(items[99:]))
    api.set_keys(items)

    outcome, _ = list_keys(api.base_url)

    assert outcome.ok and names(outcome) == [item["name"] for item in items]


def test_keys_without_a_limit_and_extra_fields(api: FakeOpenRouter) -> None:
    api.set_keys([
        key_item("no-limit", usage_daily=3.0),
        key_item("limit-but-no-remaining", limit=10.0, remaining=None, limit_reset="daily",
                 limit_remaining=None),
        key_item("overrun", limit=10.0, remaining=-0.25, usage_daily=10.25),
        key_item("future-fields", limit=5, usage_daily=1, workspace_id="w-1",
                 rate_limit={"requests": 10}, usage_yearly=99.0),
        with_fields(key_item("nulls-where-allowed"), name=None, label=None, disabled=None),
    ])

    outcome, _ = list_keys(api.base_url)

    assert outcome.ok, outcome
    by_label = {key.label: key for key in outcome.keys}
    assert len(by_label) == 5
    no_limit, no_remaining, overrun, future, nulls = outcome.keys
    assert (no_limit.limit, no_limit.limit_remaining, no_limit.limit_reset) == (None, None, None)
    assert no_limit.usage_daily == 3.0
    assert (no_remaining.limit, no_remaining.limit_remaining) == (10.0, None)
    assert no_remaining.limit_reset == "daily"
    assert overrun.limit_remaining == -0.25
    assert (future.limit, future.limit_remaining, future.usage_daily) == (5.0, 4.0, 1.0)
    assert isinstance(future.limit, float)
    assert (nulls.name, nulls.label, nulls.disabled) == ("", "", False)


# =========================================================================== failures


@pytest.mark.parametrize(("answer", "kind", "words"), [
    (Resp.status_only(500), FetchKind.TRANSIENT, "HTTP 500"),
    (Resp.json({"error": {"message": "nope"}}, status=401), FetchKind.AUTH, "HTTP 401"),
    (Resp.html("<h1>portal</h1>"), FetchKind.BAD_RESPONSE, "expected JSON"),
    (Resp.json({"data": {"not": "a list"}}), FetchKind.BAD_RESPONSE, '"data" list'),
    (Resp(status=200, body=b'{"data": [', content_type="application/json"),
     FetchKind.BAD_RESPONSE, "not valid JSON"),
], ids=["500", "401", "html", "data-not-a-list", "cut-json"])
def test_a_failing_second_page_fails_the_whole_listing(
        api: FakeOpenRouter, answer: Resp, kind: FetchKind, words: str) -> None:
    api.set_keys(many(150))
    api.script(f"{KEYS}?offset=100", answer, answer, answer)

    outcome, _ = list_keys(api.base_url)

    assert outcome.kind is kind and not outcome.ok, outcome
    assert outcome.keys == ()  # never the first page alone
    assert outcome.pages == 2
    assert "keys page 2 (offset 100)" in outcome.message and words in outcome.message, outcome
    retried = kind is FetchKind.TRANSIENT
    assert outcome.attempts == (1 + 3 if retried else 1 + 1)


def test_a_transient_second_page_is_retried_then_the_listing_is_whole(
        api: FakeOpenRouter) -> None:
    api.set_keys(many(150))
    api.script(f"{KEYS}?offset=100", Resp.status_only(503))

    outcome, _ = list_keys(api.base_url)

    assert outcome.ok and len(outcome.keys) == 150, outcome
    assert (outcome.pages, outcome.attempts) == (2, 3)
    assert offsets(api.requests) == ["0", "100", "100"]


def test_a_trickling_second_page_ends_at_the_one_deadline_of_the_listing(
        api: FakeOpenRouter) -> None:
    # Page 1 takes 1.5 s of the 2 s budget; page 2 would trickle for minutes. One deadline
    # ends it all at ~2 s; a deadline per page would end at ~3.5 s.
    api.set_keys(many(150))
    api.script(f"{KEYS}?offset=0", delayed(1.5))
    api.script(f"{KEYS}?offset=100", trickled(0.05))

    outcome, elapsed = list_keys(api.base_url, timeout=2.0)

    assert outcome.kind is FetchKind.TRANSIENT, outcome
    assert "keys page 2 (offset 100)" in outcome.message and "timed out" in outcome.message
    assert outcome.keys == ()
    assert elapsed < 2.0 + MARGIN, elapsed
    assert offsets(api.requests) == ["0", "100"]  # no retry once the budget is spent


def test_a_deadline_already_spent_asks_for_nothing(api: FakeOpenRouter) -> None:
    outcome, _ = list_keys(api.base_url, deadline=time.monotonic() - 1.0)

    assert outcome.kind is FetchKind.TRANSIENT and "timed out" in outcome.message
    assert api.count == 0


def test_a_gzip_page_and_a_page_over_the_credits_cap_are_read(api: FakeOpenRouter) -> None:
    items = many(150, description="x" * 400)  # ~1 KB an item: page 1 is ~100 KB
    assert len(json.dumps({"data": items[:100]})) > MAX_BODY
    api.set_keys(items)
    api.script(f"{KEYS}?offset=100", gzip_encoded)

    outcome, _ = list_keys(api.base_url)

    assert outcome.ok and len(outcome.keys) == 150, outcome


def test_a_page_past_its_cap_is_a_bad_response(api: FakeOpenRouter) -> None:
    api.set_keys(many(100, description="x" * 12_000))  # ~1.2 MB

    outcome, _ = list_keys(api.base_url)

    assert outcome.kind is FetchKind.BAD_RESPONSE and "larger than" in outcome.message, outcome


def test_more_pages_than_the_cap_is_a_bad_response(api: FakeOpenRouter) -> None:
    api.set_keys(many(301))

    outcome, _ = list_keys(api.base_url, max_pages=3)

    assert outcome.kind is FetchKind.BAD_RESPONSE and outcome.keys == ()
    assert "300 keys or more" in outcome.message, outcome
    assert offsets(api.requests) == ["0", "100", "200"]


def test_the_default_page_cap_is_ten_thousand_keys(api: FakeOpenRouter) -> None:
    assert MAX_PAGES * PAGE_SIZE == 10_000
    api.set_keys(many(10_001))

    outcome, _ = list_keys(api.base_url, timeout=60.0)

    assert outcome.kind is FetchKind.BAD_RESPONSE and "10,000 keys or more" in outcome.message
    assert api.count == MAX_PAGES


@pytest.mark.parametrize(("field", "value", "words"), [
    ("hash", None, "hash is missing"),
    ("hash", 12345, "hash is missing or not a plain identifier"),
    ("hash", "../credits", "hash is missing or not a plain identifier"),
    ("hash", "", "hash"),
    ("usage_daily", "1e309", "usage_daily is not a finite number"),
    ("usage_weekly", True, "usage_weekly is missing or not a number"),
    ("usage", -1, "usage is negative"),
    ("usage_monthly", 2e12, "usage_monthly is above 1e12"),
    ("limit", False, "limit is missing or not a number"),
    ("limit_remaining", "12", "limit_remaining is missing or not a number"),
    ("disabled", "no", "disabled is not true or false"),
    ("name", 7, "name is not text"),
    ("label", ["x"], "label is not text"),
    ("limit_reset", 30, "limit_reset is not text"),
], ids=lambda v: str(v)[:12])
def test_a_malformed_item_is_a_bad_response_naming_the_field_not_the_hash(
        api: FakeOpenRouter, field: str, value: Any, words: str) -> None:
    items = many(120)
    items[104]["hash"] = CANARY
    bad = dict(items[104])
    if field == "hash" and value is None:
        del bad["hash"]
    else:
        bad[field] = value
    body = json.dumps({"data": [*items[100:104], bad, *items[105:]]})
    body = body.replace('"1e309"', "1e309")  # Python's json reads 1e309 as inf
    api.set_keys(items)
    api.script(f"{KEYS}?offset=100", Resp(body=body.encode(), content_type="application/json"))

    outcome, _ = list_keys(api.base_url)

    assert outcome.kind is FetchKind.BAD_RESPONSE and outcome.keys == (), outcome
    assert "keys page 2 (offset 100): item 5:" in outcome.message, outcome
    assert words in outcome.message, outcome
    assert_no_hash(outcome.message)


def test_nan_in_a_page_is_a_bad_response(api: FakeOpenRouter) -> None:
    item = key_item("k", usage_daily=float("nan"))
    api.script(f"{KEYS}?offset=0", keys_page([item]))

    outcome, _ = list_keys(api.base_url)

    assert outcome.kind is FetchKind.BAD_RESPONSE and outcome.keys == ()


def test_a_wrong_key_is_an_auth_failure_and_never_shown(api: FakeOpenRouter) -> None:
    outcome, _ = list_keys(api.base_url, key=OTHER_KEY)

    assert outcome.kind is FetchKind.AUTH and outcome.attempts == 1
    assert "management key" in outcome.message
    assert_no_hash(outcome.message, OTHER_KEY)


# =========================================================================== accounts


def test_two_accounts_are_told_apart_by_their_bearer_key() -> None:
    with FakeOpenRouter() as api:
        a = api.add_account(KEY, 50.0, 10.0, keys=many(130, prefix="a"))
        b = api.add_account(OTHER_KEY, 80.0, 5.0, keys=many(20, prefix="b"))
        listed_a, _ = list_keys(api.base_url, key=KEY)
        listed_b, _ = list_keys(api.base_url, key=OTHER_KEY)
        stranger, _ = list_keys(api.base_url, key="sk-or-v1-someone-else")
        session = new_session()
        credits_a = fetch_credits(session, Endpoint(api.base_url, KEY, 5.0))
        credits_b = fetch_credits(session, Endpoint(api.base_url, OTHER_KEY, 5.0))
        session.close()

    assert names(listed_a) == [f"a-{i:04d}" for i in range(130)] and listed_a.pages == 2
    assert names(listed_b) == [f"b-{i:04d}" for i in range(20)] and listed_b.pages == 1
    assert stranger.kind is FetchKind.AUTH
    assert (credits_a.total_credits, credits_a.total_usage) == (50.0, 10.0)
    assert (credits_b.total_credits, credits_b.total_usage) == (80.0, 5.0)
    assert len(a.keys) == 130 and len(b.keys) == 20


def test_one_accounts_scripted_fault_leaves_the_other_alone() -> None:
    with FakeOpenRouter() as api:
        a = api.add_account(KEY, keys=many(150, prefix="a"))
        api.add_account(OTHER_KEY, keys=many(150, prefix="b"))
        a.script(f"{KEYS}?offset=100", Resp.status_only(500), Resp.status_only(500),
                 Resp.status_only(500))
        listed_a, _ = list_keys(api.base_url, key=KEY)
        listed_b, _ = list_keys(api.base_url, key=OTHER_KEY)

    assert listed_a.kind is FetchKind.TRANSIENT
    assert listed_b.ok and len(listed_b.keys) == 150


# =========================================================================== PATCH


def test_disable_key_sends_exactly_one_patch_and_the_key_leaves_the_listing(
        api: FakeOpenRouter) -> None:
    api.set_keys(many(150))
    target = api.key("key-0042")

    outcome = disable(api.base_url, target["hash"])

    assert outcome.kind is FetchKind.OK and outcome.ok and outcome.attempts == 1, outcome
    [patch] = api.requests
    assert (patch.method, patch.path) == ("PATCH", f"{KEYS}/{target['hash']}")
    assert json.loads(patch.body) == {"disabled": True}
    assert patch.header("Content-Type") == "application/json"
    assert patch.header("Authorization") == f"Bearer {KEY}"
    assert api.key("key-0042")["disabled"] is True

    listed, _ = list_keys(api.base_url)
    assert listed.ok and len(listed.keys) == 149 and "key-0042" not in names(listed)
    assert len(api.patches) == 1


@pytest.mark.parametrize(("answer", "kind", "words", "attempts"), [
    (Resp.json({"error": {"message": "no"}}, status=401), FetchKind.AUTH, "HTTP 401", 1),
    (Resp.json({"error": {"message": "no"}}, status=403), FetchKind.AUTH, "HTTP 403", 1),
    (Resp.json({"error": {"message": "Not Found"}}, status=404), FetchKind.BAD_RESPONSE,
     "does not know the key", 1),
    (Resp.json({"error": {"message": "bad"}}, status=400), FetchKind.BAD_RESPONSE, "HTTP 400", 1),
    (Resp.status_only(500), FetchKind.TRANSIENT, "HTTP 500", 3),
    (Resp.html("<h1>portal</h1>"), FetchKind.BAD_RESPONSE, "expected JSON", 1),
    (Resp.json({"data": {"disabled": False}}), FetchKind.BAD_RESPONSE, "still enabled", 1),
    (Resp.redirect("http://127.0.0.1:1/elsewhere"), FetchKind.BAD_RESPONSE, "redirect", 1),
], ids=["401", "403", "404", "400", "500", "html", "still-enabled", "redirect"])
def test_a_failed_patch_is_classified(api: FakeOpenRouter, answer: Resp, kind: FetchKind,
                                      words: str, attempts: int) -> None:
    api.set_keys([key_item("ci-1", key_hash=CANARY)])
    api.script(f"{KEYS}/{CANARY}", answer, answer, answer)

    outcome = disable(api.base_url, CANARY)

    assert outcome.kind is kind and not outcome.ok, outcome
    assert words in outcome.message and outcome.attempts == attempts, outcome
    assert api.count == attempts
    assert_no_hash(outcome.message)


def test_an_empty_204_is_a_done_patch(api: FakeOpenRouter) -> None:
    api.set_keys([key_item("ci-1")])
    api.script(f"{KEYS}/{api.keys[0]['hash']}", Resp.status_only(204))

    assert disable(api.base_url, api.keys[0]["hash"]).ok


def test_a_transient_patch_failure_is_retried_since_the_change_is_idempotent(
        api: FakeOpenRouter) -> None:
    api.set_keys([key_item("ci-1", key_hash=CANARY)])
    api.script(f"{KEYS}/{CANARY}", Resp.status_only(502))

    outcome = disable(api.base_url, CANARY)

    assert outcome.ok and outcome.attempts == 2, outcome
    assert [r.method for r in api.requests] == ["PATCH", "PATCH"]
    assert api.keys[0]["disabled"] is True


def test_a_hash_that_is_not_a_plain_identifier_is_never_sent(api: FakeOpenRouter) -> None:
    outcome = disable(api.base_url, "../credits")

    assert outcome.kind is FetchKind.BAD_RESPONSE and "nothing was sent" in outcome.message
    assert outcome.attempts == 0 and api.count == 0


def test_a_patch_to_nothing_listening_is_transient_within_its_timeout() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    outcome = disable(f"http://127.0.0.1:{port}/api/v1", CANARY, timeout=2.0)
    assert outcome.kind is FetchKind.TRANSIENT and "could not connect" in outcome.message
    assert time.monotonic() - started < 2.0 + MARGIN
    assert_no_hash(outcome.message)


# --------------------------------------------------------------------------- Retry.UNSENT


def patch_once(base_url: str, path: str, timeout: float = 3.0) -> Any:
    session = new_session()
    try:
        return request_json(session, Endpoint(base_url, KEY, timeout), "PATCH", path,
                            body={"limit": 5})
    finally:
        session.close()


@pytest.mark.parametrize("answer", [Resp.status_only(500), Resp.status_only(429),
                                    Resp(status=200, body=b'{"data": {}}', close_mid_body=True,
                                         content_type="application/json")],
                         ids=["500", "429", "cut-body"])
def test_a_change_that_may_have_arrived_is_not_retried_by_default(
        api: FakeOpenRouter, answer: Resp) -> None:
    api.set_keys([key_item("ci-1", key_hash=CANARY)])
    api.script(f"{KEYS}/{CANARY}", answer, answer, answer)

    fetched = patch_once(api.base_url, f"/keys/{CANARY}")

    assert fetched.kind is FetchKind.TRANSIENT and fetched.attempts == 1, fetched
    assert api.count == 1


def test_a_change_that_never_left_is_retried() -> None:
    # Nothing listens: no connection was made, so the request provably never arrived.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fetched = patch_once(f"http://127.0.0.1:{port}/api/v1", "/keys/abc", timeout=5.0)
    assert fetched.kind is FetchKind.TRANSIENT and fetched.attempts == 3, fetched


def test_retry_transient_retries_a_change_on_a_5xx(api: FakeOpenRouter) -> None:
    api.set_keys([key_item("ci-1", key_hash=CANARY)])
    api.script(f"{KEYS}/{CANARY}", Resp.status_only(500))
    session = new_session()
    fetched = request_json(session, Endpoint(api.base_url, KEY, 5.0), "PATCH", f"/keys/{CANARY}",
                           body={"disabled": True}, retry=Retry.TRANSIENT)
    session.close()
    assert fetched.ok and fetched.attempts == 2, fetched


# =========================================================================== no hash in messages


ECHOES = {
    "content-type": lambda h: Resp(body=b"{}", content_type=f"text/{h}"),
    "content-type-upper": lambda h: Resp(body=b"{}", content_type=f"text/{h.upper()}"),
    "content-type-padded": lambda h: Resp(body=b"{}", content_type=f"text/plain; k={h}"),
    "content-encoding": lambda h: Resp(body=b"{}", content_type="application/json",
                                       headers={"Content-Encoding": f"x-{h}"}),
    "error-body": lambda h: Resp.json({"error": {"message": f"key {h} not found"}}, status=404),
    "500-body": lambda h: Resp(status=500, body=f"Traceback: {h}"),
    "header-only": lambda h: Resp.json({"data": {}}, headers={"X-Key-Hash": h}, status=400),
}


@pytest.mark.parametrize("echo", list(ECHOES))
@pytest.mark.parametrize("key_hash", [CANARY, "canary_Hash-not-hex_XYZ-0001"],
                         ids=["hex", "not-hex"])
def test_no_message_ever_carries_a_full_hash(api: FakeOpenRouter, echo: str,
                                             key_hash: str) -> None:
    answer = ECHOES[echo](key_hash)
    api.set_keys([key_item("canary", key_hash=key_hash), *many(100)])
    api.script(f"{KEYS}?offset=100", answer, answer, answer)  # page 2 echoes a page-1 hash
    api.script(f"{KEYS}/{key_hash}", answer, answer, answer)

    listed, _ = list_keys(api.base_url, timeout=1.0)  # one retry at most: 500s end sooner
    patched = disable(api.base_url, key_hash, timeout=1.0)

    assert not listed.ok and not patched.ok, (listed, patched)
    for message in (listed.message, patched.message):
        assert message
        if key_hash == CANARY:
            assert_no_hash(message)
        assert key_hash.lower() not in message.lower(), message


def test_an_api_key_echoed_in_a_header_is_masked_before_it_is_cut() -> None:
    # Content-Type is quoted cut to 60 characters: a real key (73) echoed in it used to be
    # cut before it was masked, so most of it reached the message.
    with FakeOpenRouter() as api:
        api.set_default(Resp(body=b"{}", content_type=f"text/{KEY}"))
        session = new_session()
        outcome = fetch_credits(session, Endpoint(api.base_url, KEY, 3.0))
        session.close()
    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert_no_hash(outcome.message, KEY)


def test_an_api_key_repr_hides_the_hash() -> None:
    [key] = parse_keys({"data": [key_item("ci-1", key_hash=CANARY)]})
    assert isinstance(key, ApiKey) and key.hash == CANARY
    assert CANARY not in repr(key) and "ci-1" in repr(key)


# =========================================================================== parse_keys


def test_names_and_labels_are_escaped_and_capped() -> None:
    item = with_fields(key_item("x"), name="ci\x1b[2J\u202e-" + "n" * 500,
                       label="sk-or-v1-a\nb...c")
    [key] = parse_keys({"data": [item]})
    assert isinstance(key, ApiKey)
    assert key.name.startswith("ci\\x1b[2J\\u202e-") and key.name.isprintable()
    assert len(key.name) <= 100 * 10  # cut to 100 characters, each escaped to at most 10
    assert key.name == escape_controls(item["name"][:100])
    assert key.label == "sk-or-v1-a\\nb...c"


@pytest.mark.parametrize(("document", "words"), [
    (None, '"data" list'), ([], '"data" list'), ({"data": None}, '"data" list'),
    ({"data": [1]}, "item 1: it is not an object"),
    ({"data": [key_item("a"), with_fields(key_item("b"), usage_daily=math.nan)]},
     "item 2: usage_daily is not a finite number"),
    ({"data": [key_item("a", usage=math.inf)]}, "item 1: usage is not a finite number"),
    ({"data": [with_fields(key_item("a"), limit=10**400)]}, "item 1: limit is out of range"),
    ({"data": [key_item("a", remaining=-2e12, limit=1.0)]},
     "item 1: limit_remaining is below -1e12"),
])
def test_parse_keys_says_what_is_wrong(document: Any, words: str) -> None:
    parsed = parse_keys(document)
    assert isinstance(parsed, str) and words in parsed, parsed


hashes = st.text("0123456789abcdefABCDEF_-", min_size=1, max_size=128)
amounts = (st.floats(min_value=0, max_value=1e12, allow_nan=False)
           | st.integers(min_value=0, max_value=10**12))
optional = st.none() | amounts
printable = st.text(max_size=100).filter(str.isprintable)
valid_items = st.fixed_dictionaries(
    {"hash": hashes, "name": printable, "label": printable, "disabled": st.booleans(),
     "limit": optional,
     "limit_remaining": st.none() | st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
     "limit_reset": st.none() | st.sampled_from(["daily", "weekly", "monthly"]),
     "usage": amounts, "usage_daily": amounts, "usage_weekly": amounts,
     "usage_monthly": amounts},
    optional={"include_byok_in_limit": st.booleans(), "byok_usage": amounts,
              "created_at": st.text(max_size=30), "expires_at": st.none()})


def as_float(value: Any) -> float | None:
    return None if value is None else float(value)


@given(st.lists(valid_items, max_size=30))
def test_any_valid_item_list_round_trips(items: list[dict[str, Any]]) -> None:
    parsed = parse_keys({"data": items})
    assert isinstance(parsed, list), parsed
    assert parsed == [ApiKey(
        id=key_id(i["hash"]), hash=i["hash"], name=i["name"], label=i["label"], disabled=i["disabled"],
        limit=as_float(i["limit"]), limit_remaining=as_float(i["limit_remaining"]),
        limit_reset=i["limit_reset"], usage=float(i["usage"]),
        usage_daily=float(i["usage_daily"]), usage_weekly=float(i["usage_weekly"]),
        usage_monthly=float(i["usage_monthly"])) for i in items]
    for key in parsed:
        assert all(isinstance(getattr(key, f), float) for f in
                   ("usage", "usage_daily", "usage_weekly", "usage_monthly"))


scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400),
                                                                      max_value=10**400)
           | st.floats() | st.text(max_size=8))
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = ["hash", "name", "label", "disabled", "limit", "limit_remaining", "limit_reset",
          "usage", "usage_daily", "usage_weekly", "usage_monthly"]


@st.composite
def spoiled_items(draw: st.DrawFn) -> dict[str, Any]:
    """A valid item with some fields replaced by junk or removed; its hash is the canary."""
    item = {**draw(valid_items), "hash": CANARY}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            item.pop(name, None)
        else:
            item[name] = draw(junk)
    return item


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(junk, st.fixed_dictionaries({"data": junk}),
                 st.fixed_dictionaries({"data": st.lists(spoiled_items() | junk, max_size=6)})))
def test_junk_never_raises_and_never_names_a_hash(document: Any) -> None:
    parsed = parse_keys(document)
    if isinstance(parsed, str):
        assert CANARY not in parsed and parsed.isprintable()
    else:
        assert all(isinstance(key, ApiKey) for key in parsed)
        for key in parsed:
            assert not [ch for ch in key.name + key.label if unicodedata.category(ch) in UNSAFE]
            for name in ("usage", "usage_daily", "usage_weekly", "usage_monthly"):
                value = getattr(key, name)
                assert math.isfinite(value) and 0 <= value <= 1e12


# =========================================================================== the fake itself


def test_the_fake_pages_like_openrouter_and_hides_disabled_keys(api: FakeOpenRouter) -> None:
    items = many(120)
    items[0]["disabled"] = True
    api.set_keys(items)
    auth = {"Authorization": f"Bearer {KEY}"}

    page1 = requests.get(api.keys_url, params={"offset": 0}, headers=auth, timeout=5).json()
    page2 = requests.get(api.keys_url, params={"offset": 100}, headers=auth, timeout=5).json()
    every = requests.get(api.keys_url, params={"offset": 100, "include_disabled": "true"},
                         headers=auth, timeout=5).json()
    bad = requests.get(api.keys_url, params={"offset": "x"}, headers=auth, timeout=5)

    assert [i["name"] for i in page1["data"]] == [f"key-{i:04d}" for i in range(1, 101)]
    assert [i["name"] for i in page2["data"]] == [f"key-{i:04d}" for i in range(101, 120)]
    assert len(every["data"]) == 20
    assert bad.status_code == 400
    label = page1["data"][0]["label"]
    assert label.startswith("sk-or-v1-") and "..." in label and len(label) == 18


def test_the_fake_keeps_its_single_account_behaviour_beside_keys() -> None:
    with FakeOpenRouter(api_key="sk-or-good") as api:
        api.set_balance(7.0, 2.0)
        api.enqueue(Resp.status_only(503))
        api.set_keys(many(3))
        good = {"Authorization": "Bearer sk-or-good"}
        first = requests.get(api.credits_url, headers=good, timeout=5)
        second = requests.get(api.credits_url, headers=good, timeout=5)
        keys = requests.get(api.keys_url, headers=good, timeout=5)
        wrong = requests.get(api.keys_url, headers={"Authorization": "Bearer nope"}, timeout=5)
        patch_unknown = requests.patch(f"{api.keys_url}/nope", json={"disabled": True},
                                       headers=good, timeout=5)
    assert (first.status_code, second.json()["data"]["total_credits"]) == (503, 7.0)
    assert len(keys.json()["data"]) == 3
    assert (wrong.status_code, patch_unknown.status_code) == (401, 404)


def test_the_fake_serves_new_keys_first(api: FakeOpenRouter) -> None:
    api.set_keys(many(2))
    api.add_keys(key_item("created-1"), key_item("created-2"))
    assert [item["name"] for item in api.keys] == ["created-2", "created-1", "key-0000",
                                                   "key-0001"]


def test_scripts_are_one_shot_and_per_path(api: FakeOpenRouter) -> None:
    api.set_keys(many(150))
    api.script(KEYS, Resp.status_only(500))  # no query: the next /keys, any offset
    auth = {"Authorization": f"Bearer {KEY}"}
    codes = [requests.get(api.keys_url, params={"offset": o}, headers=auth, timeout=5).status_code
             for o in (100, 100, 0)]
    assert codes == [500, 200, 200]


def test_the_fake_applies_a_trickle_script_to_the_real_page(api: FakeOpenRouter) -> None:
    api.set_keys(many(1))
    api.script(f"{KEYS}?offset=0", trickled(0.001))
    box: list[requests.Response] = []
    runner = threading.Thread(target=lambda: box.append(requests.get(
        f"{api.keys_url}?offset=0", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)))
    runner.start()
    runner.join(15)
    assert box and box[0].json()["data"][0]["name"] == "key-0000"
