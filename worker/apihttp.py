"""One GET of a JSON document from the OpenRouter API: bounded by a wall-clock deadline,
retried when transient, classified. Any endpoint: the path is data (worker.openrouter
parses what each endpoint returns).

`get_json` never raises: every failure comes back as a Fetched whose message is safe to
log and store (no key, no response body, controls escaped). The deadline holds in every
phase (connect, TLS, status line, headers, body) through worker.httpwatch, for sessions
made by `new_session`; each attempt's connection ends with it (ticks are minutes apart,
so there is nothing to reuse).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from worker.decoding import Decoder, Refused, decoder_for
from worker.domain import FetchKind
from worker.httpwatch import Watch, WatchedAdapter, watching
from worker.text import escape_controls

MAX_BODY = 64 * 1024  # decoded bytes, per response
MAX_RETRIES = 2
BACKOFF = (0.5, 1.0)
CHUNK = 16 * 1024
USER_AGENT = "creditwatch/0.1.0"
ACCEPT_ENCODING = "gzip, deflate"
AUTH_MESSAGE = (
    "HTTP {status}: OpenRouter refused the key; it is invalid or is not a management key "
    "(create one under Settings > Provisioning/Management keys)"
)
KEY_MESSAGE = "the API key holds a character that is not printable ASCII, so it cannot be sent; check the key"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the API is, the key for it, and the wall-clock bound of one fetch (seconds)."""

    base_url: str
    api_key: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Fetched:
    """One GET's result: the JSON document when ok, else a classified failure."""

    kind: FetchKind
    document: Any = None
    message: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.kind is FetchKind.OK


class _Deadline(Exception):
    """The wall-clock budget of the fetch ran out while reading."""


class _NoRedirectSession(requests.Session):
    """Never follows a redirect, and never reads a 3xx body outside our deadline.

    `allow_redirects=False` alone is not enough: requests still runs its redirect
    machinery inside send(), which reads the whole 3xx body (no deadline, no cap).
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


def new_session() -> requests.Session:
    """A session that ignores netrc and proxy variables, so the key goes only where configured,
    and whose sockets fetch_credits can end at its deadline (other sessions lack that)."""
    session = _NoRedirectSession()
    session.trust_env = False
    adapter = WatchedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def get_json(
    session: requests.Session,
    endpoint: Endpoint,
    path: str,
    params: Mapping[str, str] | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Fetched:
    """GET {base_url}{path} within `timeout` in all, retrying transient failures twice."""
    key = endpoint.api_key
    if not (key.isascii() and key.isprintable()):
        # http.client would raise UnicodeEncodeError for it, or send it as latin-1 bytes.
        return Fetched(FetchKind.AUTH, message=KEY_MESSAGE)
    request = _Request(f"{endpoint.base_url}{path}", dict(params or {}), endpoint)
    try:
        with watching(clock() + endpoint.timeout, clock) as watch:
            fetched, attempts = _attempts(session, request, watch, sleep)
    except Exception as err:  # noqa: BLE001 - the contract is "never raises"; say what it was
        fetched, attempts = _transient(f"the fetch failed unexpectedly ({type(err).__name__})"), 1
    return _finish(fetched, attempts, key)


@dataclass(frozen=True, slots=True)
class _Request:
    url: str
    params: dict[str, str]
    endpoint: Endpoint


def _attempts(session: requests.Session, request: _Request, watch: Watch,
              sleep: Callable[[float], None]) -> tuple[Fetched, int]:
    attempts = 0
    while True:
        attempts += 1
        outcome, retry_after = _attempt(session, request, watch)
        if outcome.kind is not FetchKind.TRANSIENT or attempts > MAX_RETRIES:
            return outcome, attempts
        wait = retry_after if retry_after is not None else BACKOFF[attempts - 1]
        # urllib3 would honour Retry-After for hours; we honour it only inside the budget.
        if watch.clock() + wait >= watch.deadline - 0.05:
            return outcome, attempts
        sleep(wait)


def _finish(outcome: Fetched, attempts: int, key: str) -> Fetched:
    # Messages quote our own words and a few response headers: mask the key in case a
    # server echoes it into one, and escape controls so a header cannot rewrite the
    # terminal, split a log line or reorder text (the one exit, so every path is covered).
    message = outcome.message.replace(key, "***") if key else outcome.message
    message = escape_controls(message)
    return Fetched(outcome.kind, outcome.document, message, attempts)


def _attempt(
    session: requests.Session, request: _Request, watch: Watch
) -> tuple[Fetched, float | None]:
    endpoint = request.endpoint
    timed_out = _transient(f"timed out after {endpoint.timeout:g}s")
    try:
        left = watch.left()
    except TimeoutError:
        return timed_out, None
    headers = {
        "Authorization": f"Bearer {endpoint.api_key}",
        "Accept": "application/json",
        "Accept-Encoding": ACCEPT_ENCODING,
        "User-Agent": USER_AGENT,
    }
    try:
        response = session.get(
            request.url, params=request.params or None, headers=headers, timeout=(left, left),
            stream=True, allow_redirects=False,
        )
        with response:
            return _classify(response, watch, endpoint.timeout)
    except requests.RequestException as err:
        if watch.expired or isinstance(err, requests.Timeout):
            return timed_out, None
        if isinstance(err, requests.ConnectionError):
            return _transient("could not connect to the API"), None
        return _transient(f"request failed ({type(err).__name__})"), None
    finally:
        watch.release()  # the attempt's connection ends with it, whatever happened


def _classify(
    response: requests.Response, watch: Watch, timeout: float
) -> tuple[Fetched, float | None]:
    status = response.status_code
    if status in (401, 403):
        return Fetched(FetchKind.AUTH, message=AUTH_MESSAGE.format(status=status)), None
    if status == 429 or status >= 500:
        return _transient(f"HTTP {status} from the API"), _retry_after(response)
    if 300 <= status < 400:
        return _bad(f"HTTP {status}: the API redirected; redirects are not followed"), None
    if not 200 <= status < 300:
        return _bad(f"HTTP {status} from the API (is base_url right?)"), None
    decoder = decoder_for(response.headers.get("Content-Encoding", ""), MAX_BODY)
    if isinstance(decoder, str):
        return _bad(decoder), None
    try:
        body = _read_body(response.raw, decoder, watch)
    except _Deadline:
        return _transient(f"timed out after {timeout:g}s while reading the body"), None
    except Refused as err:
        return _bad(str(err)), None
    return _parse(body, response.headers.get("Content-Type", "")), None


def _read_body(raw: Any, decoder: Decoder, watch: Watch) -> bytes:
    """Read and decode the body against the deadline (the watch ends a read blocked past it)."""
    while True:
        try:
            chunk = raw.read1(CHUNK, decode_content=False)  # we decode, bounded, ourselves
        except Exception as err:  # noqa: BLE001 - urllib3 wraps socket errors in many types of its own
            if watch.passed():
                raise _Deadline from None
            raise requests.ConnectionError(type(err).__name__) from None
        if watch.passed():
            raise _Deadline
        if not chunk:
            return decoder.finish()
        decoder.feed(chunk)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _parse(body: bytes, content_type: str) -> Fetched:
    if "json" not in content_type.lower():
        shown = content_type.split(";")[0].strip()[:60] or "no content type"
        return _bad(f"expected JSON, got {shown} (a captive portal or proxy page?)")
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _bad("the body is not valid JSON")
    return Fetched(FetchKind.OK, document)


def _reject_constant(name: str) -> float:
    msg = f"non-finite constant {name}"
    raise ValueError(msg)


def _transient(message: str) -> Fetched:
    return Fetched(FetchKind.TRANSIENT, message=message)


def _bad(message: str) -> Fetched:
    return Fetched(FetchKind.BAD_RESPONSE, message=message)
