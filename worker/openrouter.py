"""The OpenRouter endpoints creditwatch reads, each a path and a parser over worker.apihttp.

`fetch_credits` never raises: every failure comes back as a FetchOutcome whose message is
safe to log and store (see worker.apihttp.get_json).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import requests

from worker.apihttp import Endpoint, Fetched, get_json, new_session
from worker.domain import FetchKind, FetchOutcome

__all__ = ["MAX_AMOUNT", "Endpoint", "fetch_credits", "new_session", "parse_credits"]

MAX_AMOUNT = 1e12  # USD, more than any account holds: a larger figure is a broken answer
CREDITS_PATH = "/credits"


def fetch_credits(
    session: requests.Session,
    endpoint: Endpoint,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchOutcome:
    """GET {base_url}/credits: the balance, or a classified failure."""
    fetched = get_json(session, endpoint, CREDITS_PATH, clock=clock, sleep=sleep)
    return _outcome(fetched)


def _outcome(fetched: Fetched) -> FetchOutcome:
    if not fetched.ok:
        return FetchOutcome(fetched.kind, message=fetched.message, attempts=fetched.attempts)
    parsed = parse_credits(fetched.document)
    if isinstance(parsed, str):
        return FetchOutcome(FetchKind.BAD_RESPONSE, message=parsed, attempts=fetched.attempts)
    credits, usage = parsed
    return FetchOutcome(FetchKind.OK, credits, usage, attempts=fetched.attempts)


def parse_credits(document: Any) -> tuple[float, float] | str:
    """(total_credits, total_usage) from `{"data": {...}}`, or a sentence saying what is wrong."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return 'the body has no "data" object'
    values = [amount(data, name) for name in ("total_credits", "total_usage")]
    errors = [v for v in values if isinstance(v, str)]
    if errors:
        return errors[0]
    credits, usage = values
    assert isinstance(credits, float) and isinstance(usage, float)
    return credits, usage


def amount(data: dict[str, Any], name: str) -> float | str:
    """The field as a finite float in [0, MAX_AMOUNT], or a sentence saying what is wrong."""
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
    if number > MAX_AMOUNT:
        return f"{name} is above 1e12 USD, which no account holds"
    return number
