"""The OpenRouter credits call: one GET, bounded by a wall-clock deadline, classified.

`fetch_credits` never raises: every failure comes back as a FetchOutcome whose
message is safe to log and store (no key, no response body).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from worker.domain import FetchKind, FetchOutcome

MAX_BODY = 64 * 1024
MAX_RETRIES = 2
BACKOFF = (0.5, 1.0)
USER_AGENT = "creditwatch/0.1.0"
AUTH_MESSAGE = (
    "HTTP {status}: OpenRouter refused the key; it is invalid or is not a management key "
    "(create one under Settings > Provisioning/Management keys)"
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    base_url: str
    api_key: str
    timeout: float

    @property
    def url(self) -> str:
        return f"{self.base_url}/credits"


class _Deadline(Exception):
    """The wall-clock budget of the fetch ran out while reading."""


class _TooBig(Exception):
    """The body passed MAX_BODY bytes."""


class _NoRedirectSession(requests.Session):
    """Never follows a redirect, and never reads a 3xx body outside our deadline.

    `allow_redirects=False` alone is not enough: requests still runs its redirect
    machinery inside send(), which reads the whole 3xx body (no deadline, no cap).
    """

    def get_redirect_target(self, resp: requests.Response) -> str | None:
        return None


def new_session() -> requests.Session:
    """A session that ignores netrc and proxy variables, so the key goes only where configured."""
    session = _NoRedirectSession()
    session.trust_env = False
    return session


def fetch_credits(
    session: requests.Session,
    endpoint: Endpoint,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchOutcome:
    """GET {base_url}/credits within `timeout` in all, retrying transient failures twice."""
    deadline = clock() + endpoint.timeout
    attempts = 0
    while True:
        attempts += 1
        outcome, retry_after = _attempt(session, endpoint, deadline, clock)
        if outcome.kind is not FetchKind.TRANSIENT or attempts > MAX_RETRIES:
            return _with_attempts(outcome, attempts, endpoint.api_key)
        wait = retry_after if retry_after is not None else BACKOFF[attempts - 1]
        # urllib3 would honour Retry-After for hours; we honour it only inside the budget.
        if clock() + wait >= deadline - 0.05:
            return _with_attempts(outcome, attempts, endpoint.api_key)
        sleep(wait)


def _with_attempts(outcome: FetchOutcome, attempts: int, key: str) -> FetchOutcome:
    # Messages quote only our own words and a few response headers; mask the key
    # anyway in case a server echoes it into one of them.
    message = outcome.message.replace(key, "***") if key else outcome.message
    return FetchOutcome(outcome.kind, outcome.total_credits, outcome.total_usage, message, attempts)


def _attempt(
    session: requests.Session, endpoint: Endpoint, deadline: float, clock: Callable[[], float]
) -> tuple[FetchOutcome, float | None]:
    left = deadline - clock()
    if left <= 0:
        return _transient(f"timed out after {endpoint.timeout:g}s"), None
    headers = {
        "Authorization": f"Bearer {endpoint.api_key}",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
    }
    try:
        response = session.get(
            endpoint.url, headers=headers, timeout=(left, left), stream=True, allow_redirects=False
        )
    except requests.Timeout:
        return _transient(f"timed out after {endpoint.timeout:g}s"), None
    except requests.ConnectionError:
        return _transient("could not connect to the API"), None
    except requests.RequestException as err:
        return _transient(f"request failed ({type(err).__name__})"), None
    with response:
        return _classify(response, deadline, clock, endpoint.timeout)


def _classify(
    response: requests.Response, deadline: float, clock: Callable[[], float], timeout: float
) -> tuple[FetchOutcome, float | None]:
    status = response.status_code
    if status in (401, 403):
        return FetchOutcome(FetchKind.AUTH, message=AUTH_MESSAGE.format(status=status)), None
    if status == 429 or status >= 500:
        return _transient(f"HTTP {status} from the API"), _retry_after(response)
    if 300 <= status < 400:
        return _bad(f"HTTP {status}: the API redirected; redirects are not followed"), None
    if not 200 <= status < 300:
        return _bad(f"HTTP {status} from the API (is base_url right?)"), None
    try:
        body = _read_body(response, deadline, clock)
    except _Deadline:
        return _transient(f"timed out after {timeout:g}s while reading the body"), None
    except _TooBig:
        return _bad(f"the body is larger than {MAX_BODY} bytes"), None
    except requests.RequestException:
        return _transient("the connection closed in the middle of the body"), None
    return _parse(body, response.headers.get("Content-Type", "")), None


def _read_body(response: requests.Response, deadline: float, clock: Callable[[], float]) -> bytes:
    """Read the body against the deadline: requests' timeouts are per read, not per request."""
    raw = response.raw
    # A server trickling one byte a second never trips a per-read timeout;
    # at the deadline, shut the socket down so a blocked read returns at once.
    watchdog = threading.Timer(max(0.0, deadline - clock()), _shutdown, args=(raw,))
    watchdog.daemon = True
    watchdog.start()
    try:
        return _read_chunks(raw, deadline, clock)
    except (OSError, ValueError) as err:
        if clock() >= deadline:
            raise _Deadline from None
        raise requests.ConnectionError(type(err).__name__) from None
    finally:
        watchdog.cancel()


def _read_chunks(raw: Any, deadline: float, clock: Callable[[], float]) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = raw.read1(16 * 1024)
        except Exception as err:  # noqa: BLE001 - urllib3 wraps socket errors in many types of its own
            if clock() >= deadline:
                raise _Deadline from None
            raise requests.ConnectionError(type(err).__name__) from None
        if clock() >= deadline:
            raise _Deadline
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooBig
        chunks.append(chunk)


def _shutdown(raw: Any) -> None:
    # Already closed or released to the pool: nothing is left to unblock.
    with contextlib.suppress(OSError, ValueError, RuntimeError, AttributeError):
        raw.shutdown()


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


def _parse(body: bytes, content_type: str) -> FetchOutcome:
    if "json" not in content_type.lower():
        shown = content_type.split(";")[0].strip()[:60] or "no content type"
        return _bad(f"expected JSON, got {shown} (a captive portal or proxy page?)")
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _bad("the body is not valid JSON")
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return _bad('the body has no "data" object')
    values = [_amount(data, name) for name in ("total_credits", "total_usage")]
    errors = [v for v in values if isinstance(v, str)]
    if errors:
        return _bad(errors[0])
    credits, usage = values
    assert isinstance(credits, float) and isinstance(usage, float)
    return FetchOutcome(FetchKind.OK, total_credits=credits, total_usage=usage)


def _reject_constant(name: str) -> float:
    msg = f"non-finite constant {name}"
    raise ValueError(msg)


def _amount(data: dict[str, Any], name: str) -> float | str:
    """The field as a finite non-negative float, or a sentence saying what is wrong."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} is missing or not a number"
    try:
        number = float(value)
    except OverflowError:
        return f"{name} is out of range"
    if not math.isfinite(number):
        return f"{name} is not a finite number"
    if number < 0:
        return f"{name} is negative"
    return number


def _transient(message: str) -> FetchOutcome:
    return FetchOutcome(FetchKind.TRANSIENT, message=message)


def _bad(message: str) -> FetchOutcome:
    return FetchOutcome(FetchKind.BAD_RESPONSE, message=message)
