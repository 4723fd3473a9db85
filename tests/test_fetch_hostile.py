"""The fetch against a hostile network: compressed answers, bombs, trickled headers and
TLS records, silent servers, implausible amounts, control characters, unusable keys.

Every fetch must come back as a classified FetchOutcome within its timeout (plus a
small margin), never raise, and leave no thread and no socket behind.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import tracemalloc
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from conftest import Cli, StartCli
from fakes import FakeOpenRouter, Resp, make_settings
from hostile import (
    ENCODERS,
    CompressingOpenRouter,
    RawServer,
    gzipped,
    raw_deflate,
    silent,
    sockets_to,
    thread_count,
    trickle_headers,
    trickle_tls_record,
)
from hypothesis import given
from hypothesis import strategies as st

from worker.apihttp import MAX_BODY
from worker.decoding import Refused, decoder_for
from worker.domain import FetchKind, FetchOutcome
from worker.openrouter import Endpoint, fetch_credits, new_session
from worker.text import escape_controls

KEY = "sk-or-v1-hostile-fetch-0123456789abcdef"
MARGIN = 1.0  # what a loaded 2-core machine may add to a fetch's own timeout
UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}  # controls, format (bidi...), line/paragraph seps, surrogates


def credits_body(total_credits: float = 100.0, total_usage: float = 40.0, pad: int = 0) -> bytes:
    doc: dict[str, object] = {"data": {"total_credits": total_credits, "total_usage": total_usage}}
    if pad:
        doc["pad"] = "x" * pad
    return json.dumps(doc).encode()


def encoded(body: bytes, coding: str, **kwargs: object) -> Resp:
    """A JSON answer whose body is already packed, announced with this Content-Encoding."""
    return Resp(body=body, content_type="application/json",
                headers={"Content-Encoding": coding}, **kwargs)


def fetch(base_url: str, timeout: float = 5.0, key: str = KEY,
          session: requests.Session | None = None) -> tuple[FetchOutcome, float]:
    """One fetch with a fresh session, as the tick makes it; returns (outcome, seconds)."""
    own = session or new_session()
    started = time.monotonic()
    try:
        outcome = fetch_credits(own, Endpoint(base_url, key, timeout))
    finally:
        own.close()
    return outcome, time.monotonic() - started


def fetch_within(base_url: str, timeout: float) -> tuple[FetchOutcome, float]:
    """fetch(), but the test itself gives up at timeout + MARGIN instead of hanging with it."""
    box: list[tuple[FetchOutcome, float]] = []
    runner = threading.Thread(target=lambda: box.append(fetch(base_url, timeout)), daemon=True)
    runner.start()
    runner.join(timeout + MARGIN)
    assert box, f"the fetch was still running {timeout + MARGIN:g}s after a {timeout:g}s timeout"
    return box[0]


def threads_after_a_fetch() -> int:
    """The thread count once a fetch has run: the process's one HTTP watchdog thread
    starts with the first fetch and stays; any other thread would be a leak."""
    with FakeOpenRouter() as api:
        assert fetch(api.base_url)[0].ok
    return threading.active_count()


def settle(read: Callable[[], int], want: int, seconds: float = 2.0) -> int:
    """Poll `read` until it returns at most `want` (or `seconds` pass); the last value read.
    (At most: a thread some earlier test left may end meanwhile.)"""
    deadline = time.monotonic() + seconds
    value = read()
    while value > want and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


# =========================================================================== compression


@pytest.mark.parametrize("style", ["gzip", "deflate", "raw-deflate"])
def test_a_compressed_answer_is_a_reading(style: str) -> None:
    with CompressingOpenRouter(style, total_credits=150.5, total_usage=42.25) as api:
        outcome, _ = fetch(api.base_url)
        [request] = api.requests
    assert request.header("Accept-Encoding") == "gzip, deflate"
    assert outcome.kind is FetchKind.OK, outcome
    assert (outcome.total_credits, outcome.total_usage) == (150.5, 42.25)


BODY = credits_body(100.0, 40.0)
CODINGS = {
    "upper-case": ("GZIP", gzipped(BODY)),
    "spaces": ("  gzip ", gzipped(BODY)),
    "x-gzip": ("x-gzip", gzipped(BODY)),
    "identity-then-gzip": ("identity, gzip", gzipped(BODY)),
    "mixed-case-deflate": ("Deflate", zlib.compress(BODY)),
    "raw-deflate": ("deflate", raw_deflate(BODY)),
    "identity": ("identity", BODY),
}


@pytest.mark.parametrize("name", list(CODINGS))
def test_content_encoding_is_read_as_a_case_insensitive_list(fake_api: FakeOpenRouter,
                                                             name: str) -> None:
    coding, body = CODINGS[name]
    fake_api.set_default(encoded(body, coding))
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.kind is FetchKind.OK, (name, outcome)
    assert (outcome.total_credits, outcome.total_usage) == (100.0, 40.0)


def test_a_gzip_answer_reads_as_one_through_the_real_check(tmp_path: Path, cli: Cli) -> None:
    with CompressingOpenRouter("gzip", total_credits=100.0, total_usage=40.0) as api:
        cfg = make_settings(tmp_path, api)
        result = cli(cfg, "check")
        assert api.count == 1
    assert result.code == 0, result
    assert "$60.00 remaining" in result.stdout, result
    assert "fetch failed" not in result.stdout


BOMB_PAYLOAD = b'{"data": {"total_credits": 1, "total_usage": 0}, "pad": "' + b"0" * (10 << 20) + b'"}'
BOMBS = {"gzip": ("gzip", gzipped(BOMB_PAYLOAD)),
         "raw-deflate": ("deflate", raw_deflate(BOMB_PAYLOAD))}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_compression_bomb_is_a_bad_response_and_is_never_inflated(
        fake_api: FakeOpenRouter, name: str) -> None:
    coding, packed = BOMBS[name]
    assert len(packed) < MAX_BODY < len(BOMB_PAYLOAD)  # small on the wire, 10 MiB inflated
    fake_api.set_default(encoded(packed, coding))

    tracemalloc.start()
    try:
        outcome, _ = fetch(fake_api.base_url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert outcome.kind is FetchKind.BAD_RESPONSE, outcome
    assert "larger than" in outcome.message and "decoded" in outcome.message, outcome
    assert peak < 1 << 20, f"{peak} bytes allocated to refuse a bomb (the cap is {MAX_BODY})"
    assert fake_api.count == 1


GOOD_GZIP = gzipped(credits_body(pad=300))
BROKEN = {
    "not-gzip-at-all": ("gzip", b"this was never gzip"),
    "flipped-byte": ("gzip", GOOD_GZIP[:40] + bytes([GOOD_GZIP[40] ^ 0xFF]) + GOOD_GZIP[41:]),
    "bad-checksum": ("gzip", GOOD_GZIP[:-8] + bytes(8)),
    "garbage-after-the-end": ("gzip", GOOD_GZIP + b"garbage"),
    "not-deflate-at-all": ("deflate", b"\xff\xff\xff\xff this is not deflate"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_corrupt_compressed_body_is_a_bad_response(fake_api: FakeOpenRouter, name: str) -> None:
    coding, body = BROKEN[name]
    fake_api.set_default(encoded(body, coding))
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.kind is FetchKind.BAD_RESPONSE, outcome
    assert "corrupt" in outcome.message and coding in outcome.message, outcome
    assert fake_api.count == 1


@pytest.mark.parametrize("coding, packed", [("gzip", GOOD_GZIP),
                                            ("deflate", zlib.compress(credits_body(pad=300)))],
                         ids=["gzip", "deflate"])
def test_a_truncated_compressed_body_is_a_bad_response(fake_api: FakeOpenRouter, coding: str,
                                                       packed: bytes) -> None:
    # A complete HTTP answer (Content-Length matches) whose compressed stream stops early.
    fake_api.set_default(encoded(packed[: len(packed) // 2], coding))
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.kind is FetchKind.BAD_RESPONSE, outcome
    assert "ends early" in outcome.message, outcome


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br", "deflate, gzip"])
def test_an_encoding_we_cannot_decode_is_a_bad_response_naming_it(fake_api: FakeOpenRouter,
                                                                  coding: str) -> None:
    fake_api.set_default(encoded(BODY, coding))
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.kind is FetchKind.BAD_RESPONSE, outcome
    assert f"'{coding}'" in outcome.message, outcome
    assert fake_api.count == 1


def test_gzip_trickled_byte_by_byte_within_the_timeout_is_a_reading(
        fake_api: FakeOpenRouter) -> None:
    packed = gzipped(BODY)
    fake_api.set_default(encoded(packed, "gzip", trickle=0.01))
    outcome, _ = fetch(fake_api.base_url, timeout=10.0)
    assert outcome.kind is FetchKind.OK, outcome
    assert (outcome.total_credits, outcome.total_usage) == (100.0, 40.0)


def test_gzip_trickled_past_the_deadline_times_out_on_the_wall_clock(
        fake_api: FakeOpenRouter) -> None:
    packed = gzipped(credits_body(pad=2000))
    fake_api.set_default(encoded(packed, "gzip", trickle=0.2))
    outcome, elapsed = fetch(fake_api.base_url, timeout=1.0)
    assert outcome.kind is FetchKind.TRANSIENT, outcome
    assert "timed out" in outcome.message
    assert elapsed < 1.0 + MARGIN, elapsed


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _decode(coding: str, chunks: list[bytes], limit: int = MAX_BODY) -> bytes:
    decoder = decoder_for(coding, limit)
    assert not isinstance(decoder, str), decoder
    for chunk in chunks:
        decoder.feed(chunk)
    return decoder.finish()


@given(data=st.binary(max_size=4096) | st.text(max_size=2000).map(str.encode),
       style=st.sampled_from(list(ENCODERS)), cuts=st.lists(st.integers(0, 1 << 20), max_size=12))
def test_any_body_under_the_cap_decodes_back_however_it_is_cut(data: bytes, style: str,
                                                               cuts: list[int]) -> None:
    coding, pack = ENCODERS[style]
    assert _decode(coding, _split(pack(data), cuts)) == data


@given(size=st.integers(MAX_BODY + 1, 8 * MAX_BODY), style=st.sampled_from(list(ENCODERS)))
def test_a_decoded_body_past_the_cap_is_refused(size: int, style: str) -> None:
    coding, pack = ENCODERS[style]
    with pytest.raises(Refused, match="larger than"):
        _decode(coding, [pack(b"{" * size)])


@given(junk=st.binary(max_size=400), coding=st.sampled_from(["gzip", "deflate", "identity"]),
       cuts=st.lists(st.integers(0, 1 << 20), max_size=6))
def test_junk_is_decoded_or_refused_never_anything_else(junk: bytes, coding: str,
                                                        cuts: list[int]) -> None:
    try:
        out = _decode(coding, _split(junk, cuts), limit=1024)
    except Refused:
        return
    assert len(out) <= 1024


# =========================================================================== stuck sockets, no leaks


@pytest.fixture
def header_trickler() -> Iterator[RawServer]:
    # One header byte every 0.5 s: never trips a per-read timeout of 1 s (the settings' timeout).
    with RawServer(trickle_headers(0.5)) as server:
        yield server


def test_trickled_headers_end_at_the_deadline_and_leave_nothing_behind() -> None:
    # A byte every 0.1 s never trips requests' per-read timeout of 0.4 s.
    with RawServer(trickle_headers(0.1)) as server:
        threads = threads_after_a_fetch()
        timeout, fetches = 0.4, 12
        for _ in range(fetches):
            outcome, elapsed = fetch_within(server.base_url, timeout)
            assert outcome.kind is FetchKind.TRANSIENT, outcome
            assert "timed out" in outcome.message, outcome
            assert elapsed < timeout + MARGIN, elapsed
        assert server.accepted == fetches
        assert settle(threading.active_count, threads) <= threads, "a fetch left a thread behind"
        assert settle(lambda: sockets_to(server.port), 0) == 0, "a fetch left a socket open"
        assert settle(lambda: server.open, 0) == 0, "the server still holds connections"


@pytest.mark.parametrize("behaviour", [silent, trickle_tls_record(0.2)],
                         ids=["silent-after-accept", "trickled-tls-record"])
def test_a_stuck_connection_ends_at_the_deadline_and_leaves_nothing_behind(
        behaviour: Callable[..., None]) -> None:
    with RawServer(behaviour) as server:
        # https:// for both: the TLS handshake is the phase these two servers hold up.
        url = f"https://127.0.0.1:{server.port}/api/v1"
        threads = threads_after_a_fetch()
        for _ in range(2):
            outcome, elapsed = fetch_within(url, 1.0)
            assert outcome.kind is FetchKind.TRANSIENT, outcome
            assert "timed out" in outcome.message, outcome
            assert elapsed < 1.0 + MARGIN, elapsed
        assert settle(threading.active_count, threads) <= threads
        assert settle(lambda: sockets_to(server.port), 0) == 0
        assert settle(lambda: server.open, 0) == 0


@pytest.mark.slow
def test_run_against_trickled_headers_keeps_threads_and_sockets_flat(
        tmp_path: Path, header_trickler: RawServer, start_cli: StartCli) -> None:
    cfg = make_settings(tmp_path, header_trickler, timeout="1s")
    proc = start_cli("run", config=cfg, env={"OPENROUTER_API_KEY": KEY})
    header_trickler.wait_for_accepted(1, timeout=20)  # start-up and migration are not measured

    samples: list[tuple[int, int, int]] = []
    started = time.monotonic()
    while time.monotonic() - started < 7.0:
        assert proc.poll() is None, proc.output()
        samples.append((thread_count(proc.pid), sockets_to(header_trickler.port, proc.pid),
                        header_trickler.open))
        time.sleep(0.1)
    ticks = header_trickler.accepted
    result = proc.stop(timeout=30)

    assert result.code == 0, result
    threads = [t for t, _, _ in samples]
    third = len(samples) // 3
    assert max(threads[-third:]) <= max(threads[:third]), f"threads grew: {threads}"
    assert max(s for _, s, _ in samples) <= 1, f"sockets to the API piled up: {samples}"
    assert max(o for _, _, o in samples) <= 1, f"the server held more than one: {samples}"
    assert ticks >= 4, f"only {ticks} ticks in 7 s at a 1 s interval with a 1 s timeout"


# =========================================================================== amounts


@pytest.mark.parametrize("raw", ['{"data": {"total_credits": 1000000000000.01, "total_usage": 1}}',
                                 '{"data": {"total_credits": 1e13, "total_usage": 1}}',
                                 '{"data": {"total_credits": 1000000000000000, "total_usage": 1}}',
                                 '{"data": {"total_credits": 1.7e308, "total_usage": 1}}',
                                 '{"data": {"total_credits": 5, "total_usage": 2e12}}'])
def test_an_amount_above_a_trillion_dollars_is_a_bad_response(fake_api: FakeOpenRouter,
                                                               raw: str) -> None:
    fake_api.set_default(Resp(body=raw.encode(), content_type="application/json"))
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.kind is FetchKind.BAD_RESPONSE, outcome
    assert "1e12" in outcome.message, outcome
    assert outcome.total_credits is None and outcome.total_usage is None


def test_an_amount_of_exactly_a_trillion_is_a_reading(fake_api: FakeOpenRouter) -> None:
    fake_api.set_balance(1e12, 10**12)
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.ok and (outcome.total_credits, outcome.total_usage) == (1e12, 1e12)


# =========================================================================== text from outside


ESCAPES = {
    "plain": ("balance ok: $12.50 (100%)", "balance ok: $12.50 (100%)"),
    "unicode": ("naïve café 日本語 🙂 \xa0nbsp", "naïve café 日本語 🙂 \xa0nbsp"),
    "backslash": ("C:\\path\\x41", "C:\\path\\x41"),
    "newline": ("a\nb", "a\\nb"),
    "crlf": ("a\r\nb", "a\\r\\nb"),
    "tab": ("a\tb", "a\\tb"),
    "nul": ("a\x00b", "a\\x00b"),
    "escape-sequence": ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
    "del": ("\x7f", "\\x7f"),
    "c1-next-line": ("a\x85b", "a\\x85b"),
    "c1-csi": ("\x9b31m", "\\x9b31m"),
    "line-separator": ("a\u2028b", "a\\u2028b"),
    "paragraph-separator": ("a\u2029b", "a\\u2029b"),
    "bidi-override": ("\u202eevil", "\\u202eevil"),
    "bidi-isolates": ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
    "bidi-marks": ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
    "zero-width-and-bom": ("\u200b\ufeff", "\\u200b\\ufeff"),
    "lone-surrogate": ("\ud800", "\\ud800"),
    "astral-format": ("\U000e0041", "\\U000e0041"),
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_escape_controls_table(name: str) -> None:
    text, expected = ESCAPES[name]
    assert escape_controls(text) == expected


@given(st.text())
def test_escaped_text_is_one_line_without_controls(text: str) -> None:
    out = escape_controls(text)
    assert not [ch for ch in out if unicodedata.category(ch) in UNSAFE], out
    assert len(out.splitlines()) <= 1
    assert escape_controls(out) == out


@given(st.text().filter(str.isprintable))
def test_printable_text_is_unchanged(text: str) -> None:
    assert escape_controls(text) == text


def test_a_content_type_with_controls_is_shown_escaped(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp(body=b"<html></html>", content_type="text/html\x1b[2J\x9b\x07\x7f"))
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert "text/html\\x1b[2J\\x9b\\x07\\x7f" in outcome.message, outcome
    assert not [ch for ch in outcome.message if unicodedata.category(ch) in UNSAFE]


def test_a_content_encoding_with_controls_is_shown_escaped(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(encoded(BODY, "br\x1b]0;x\x07"))
    outcome, _ = fetch(fake_api.base_url)
    assert outcome.kind is FetchKind.BAD_RESPONSE
    assert "br\\x1b]0;x\\x07" in outcome.message, outcome
    assert not [ch for ch in outcome.message if unicodedata.category(ch) in UNSAFE]


# =========================================================================== never raises


@pytest.mark.parametrize("key", ["sk-or-v1-caf\u00e9", "sk-or-v1-\u20ac-euro",
                                 "sk-or-v1-\u043a\u043b\u044e\u0447", "sk-or-v1-two\nlines",
                                 "sk-or-v1-\x00nul"])
def test_a_key_that_cannot_go_in_a_header_is_a_clear_auth_failure(fake_api: FakeOpenRouter,
                                                                  key: str) -> None:
    threads = threading.active_count()
    outcome, elapsed = fetch(fake_api.base_url, key=key)
    assert outcome.kind is FetchKind.AUTH, outcome
    assert "timed out" not in outcome.message
    assert "printable ASCII" in outcome.message, outcome
    assert key not in outcome.message and key[9:] not in outcome.message
    assert fake_api.count == 0, "the key was sent anyway"
    assert elapsed < 1.0
    assert settle(threading.active_count, threads) <= threads


def test_an_unexpected_exception_inside_the_fetch_is_a_classified_outcome(
        fake_api: FakeOpenRouter) -> None:
    def explode(response: requests.Response, **kwargs: object) -> None:
        raise RuntimeError("a hook went wrong")

    threads = threads_after_a_fetch()
    session = new_session()
    session.hooks["response"].append(explode)

    outcome, _ = fetch(fake_api.base_url, session=session)

    assert outcome.kind is not FetchKind.OK
    assert "RuntimeError" in outcome.message and "timed out" not in outcome.message, outcome
    assert settle(threading.active_count, threads) <= threads
    assert settle(lambda: sockets_to(fake_api.port), 0) == 0
