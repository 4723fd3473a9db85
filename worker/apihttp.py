"""One request for a JSON document from the OpenRouter API (a GET, or a change such as a
PATCH with a JSON body): bounded by a wall-clock deadline, retried only when that is safe,
classified. Any endpoint: the path is data (worker.openrouter parses what each returns).

`request_json` (and `get_json`, its GET form) never raises: every failure comes back as a
Fetched whose message is safe to log and store (no key, no other secret the caller names,
no long hex run, no response body, controls escaped). The deadline holds in every phase
(connect, TLS, status line, headers, body) through worker.httpwatch, for sessions made by
`new_session`; each attempt's connection ends with it (ticks are minutes apart, so there
is nothing to reuse). Several calls can share one deadline (`deadline=`), e.g. the pages
of one listing.

Retries (`Retry`): a GET is retried on any transient failure. A change is retried only as
its caller says: `Retry.UNSENT` (the default for any method but GET) retries only when no
connection was made, so the request provably never reached the server; `Retry.TRANSIENT`
is for a change that is idempotent (setting a field to a value), where a second copy after
an unseen success leaves the same state.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

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
# Keys (sk-or-v1-<64 hex>) and key hashes (64 hex) are long hex runs; none of our own words
# is one. Masking every run this long also covers a secret cut short where a header is
# quoted, or echoed in another case, which a plain replace of the secret would miss.
_HEX_RUN = re.compile(r"[0-9a-fA-F]{16,}")


class Retry(StrEnum):
    """Which failed attempts may be made again (see the module docstring)."""

    TRANSIENT = "transient"  # every transient failure: a GET, or an idempotent change
    UNSENT = "unsent"  # only when no connection was made: the request never left


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
    status: int | None = None  # the last answer's HTTP status; None if none came

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
    deadline: float | None = None,
    max_body: int = MAX_BODY,
    redact: Collection[str] = (),
) -> Fetched:
    """GET {base_url}{path} within `timeout` in all (or by `deadline`), retrying transient failures twice."""
    return request_json(session, endpoint, "GET", path, params=params, clock=clock, sleep=sleep,
                        deadline=deadline, max_body=max_body, redact=redact)


def request_json(
    session: requests.Session,
    endpoint: Endpoint,
    method: str,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    body: Any = None,
    retry: Retry | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    max_body: int = MAX_BODY,
    redact: Collection[str] = (),
) -> Fetched:
    """`method` {base_url}{path}, with `body` as JSON unless None, by `deadline` (on `clock`;
    default `timeout` from now), its answer's JSON or a classified failure; never raises.

    `retry` defaults to TRANSIENT for GET and UNSENT for anything else; `redact` names more
    secrets (e.g. a key hash in the path) that no message may carry; `max_body` caps the
    decoded answer in bytes.
    """
    key = endpoint.api_key
    if not (key.isascii() and key.isprintable()):
        # http.client would raise UnicodeEncodeError for it, or send it as latin-1 bytes.
        return Fetched(FetchKind.AUTH, message=KEY_MESSAGE)
    secrets = tuple(s for s in (key, *redact) if s)
    verb = method.upper()
    mode = retry or (Retry.TRANSIENT if verb == "GET" else Retry.UNSENT)
    until = clock() + endpoint.timeout if deadline is None else deadline
    try:
        request = _Request(verb, f"{endpoint.base_url}{path}", dict(params or {}),
                           _json_body(body), endpoint, max_body, secrets)
        with watching(until, clock) as watch:
            fetched = _attempts(session, request, watch, sleep, mode)
    except Exception as err:  # noqa: BLE001 - the contract is "never raises"; say what it was
        fetched = _transient(f"the request failed unexpectedly ({type(err).__name__})")
    return _finish(fetched, secrets)


def _json_body(body: Any) -> bytes | None:
    # allow_nan=False: NaN is not JSON, and the API would read it as something else.
    return None if body is None else json.dumps(body, allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class _Request:
    method: str
    url: str
    params: dict[str, str]
    body: bytes | None
    endpoint: Endpoint
    max_body: int
    secrets: tuple[str, ...]


def _attempts(session: requests.Session, request: _Request, watch: Watch,
              sleep: Callable[[float], None], mode: Retry) -> Fetched:
    attempts = 0
    while True:
        attempts += 1
        outcome, retry_after, sent = _attempt(session, request, watch)
        outcome = replace(outcome, attempts=attempts)
        if outcome.kind is not FetchKind.TRANSIENT or attempts > MAX_RETRIES:
            return outcome
        if sent and mode is Retry.UNSENT:
            return outcome  # it may have been applied: the caller decides, not a blind retry
        wait = retry_after if retry_after is not None else BACKOFF[attempts - 1]
        # urllib3 would honour Retry-After for hours; we honour it only inside the budget.
        if watch.clock() + wait >= watch.deadline - 0.05:
            return outcome
        sleep(wait)


def _finish(outcome: Fetched, secrets: tuple[str, ...]) -> Fetched:
    # Messages quote our own words and a few response headers: mask the secrets in case a
    # server echoes one, and escape controls so a header cannot rewrite the terminal,
    # split a log line or reorder text (the one exit, so every path is covered).
    return replace(outcome, message=escape_controls(_mask(outcome.message, secrets)))


def _mask(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with each secret (in any case) and every long hex run replaced by ***."""
    if not text:
        return text
    for secret in secrets:
        text = re.sub(re.escape(secret), "***", text, flags=re.IGNORECASE)
    return _HEX_RUN.sub("***", text)


def _attempt(
    session: requests.Session, request: _Request, watch: Watch
) -> tuple[Fetched, float | None, bool]:
    """One try: its outcome, the Retry-After to honour, and whether the request may have
    reached the server (False only when no connection was made)."""
    endpoint = request.endpoint
    timed_out = _transient(f"timed out after {endpoint.timeout:g}s")
    try:
        left = watch.left()
    except TimeoutError:
        return timed_out, None, False
    headers = {
        "Authorization": f"Bearer {endpoint.api_key}",
        "Accept": "application/json",
        "Accept-Encoding": ACCEPT_ENCODING,
        "User-Agent": USER_AGENT,
    }
    if request.body is not None:
        headers["Content-Type"] = "application/json"
    try:
        response = session.request(
            request.method, request.url, params=request.params or None, data=request.body,
            headers=headers, timeout=(left, left), stream=True, allow_redirects=False,
        )
        with response:
            fetched, retry_after = _classify(response, watch, request)
            return fetched, retry_after, True
    except requests.RequestException as err:
        sent = not _unconnected(err)
        if watch.expired or isinstance(err, requests.Timeout):
            return timed_out, None, sent
        if isinstance(err, requests.ConnectionError):
            return _transient("could not connect to the API"), None, sent
        return _transient(f"request failed ({type(err).__name__})"), None, sent
    finally:
        watch.release()  # the attempt's connection ends with it, whatever happened


def _unconnected(err: requests.RequestException) -> bool:
    """Whether the request failed before any connection was made (so it was never sent)."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = err.args[0] if err.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    # urllib3 raises these only while connecting: refused, unreachable, no such name,
    # connect timed out (NewConnectionError and NameResolutionError are subclasses).
    return isinstance(reason, ConnectTimeoutError)


def _classify(
    response: requests.Response, watch: Watch, request: _Request
) -> tuple[Fetched, float | None]:
    fetched, retry_after = _classify_status(response, watch, request)
    return replace(fetched, status=response.status_code), retry_after


def _classify_status(
    response: requests.Response, watch: Watch, request: _Request
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
    if status == 204:
        return Fetched(FetchKind.OK), None  # a change acknowledged with no body
    decoder = decoder_for(_header(response, "Content-Encoding", request), request.max_body)
    if isinstance(decoder, str):
        return _bad(decoder), None
    try:
        body = _read_body(response.raw, decoder, watch)
    except _Deadline:
        timeout = request.endpoint.timeout
        return _transient(f"timed out after {timeout:g}s while reading the body"), None
    except Refused as err:
        return _bad(str(err)), None
    return _parse(body, _header(response, "Content-Type", request)), None


def _header(response: requests.Response, name: str, request: _Request) -> str:
    """A response header with our secrets masked before any message quotes (and cuts) it."""
    return _mask(response.headers.get(name, ""), request.secrets)


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
