"""The OpenRouter endpoints creditwatch reads, each a path and a parser over worker.apihttp,
and the one change it can make (disable a key).

None of these raises: every failure comes back as an outcome whose message is safe to log
and store (see worker.apihttp.request_json). No message carries a key's full hash: a hash
identifies the key to the API, and people know a key by its name and masked label.

Retries: GETs are retried on any transient failure. `disable_key` is a PATCH, retried the
same way on purpose: `{"disabled": true}` sets a field to a value, so a second copy after a
first that succeeded unseen (a timeout, a 502 from a proxy) leaves the key as the first
left it, and the answer to the retry tells the truth about the key, where stopping at the
first ambiguous failure would report "failed" for a key that may well be disabled.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests

from worker.apihttp import Endpoint, Fetched, Retry, get_json, new_session, request_json
from worker.domain import ApiKey, FetchKind, FetchOutcome, key_id
from worker.text import escape_controls

__all__ = [
    "MAX_AMOUNT", "MAX_PAGES", "PAGE_SIZE", "ApiKey", "Endpoint", "KeysOutcome", "PatchOutcome",
    "disable_key", "fetch_credits", "fetch_keys", "new_session", "parse_credits", "parse_keys",
]

MAX_AMOUNT = 1e12  # USD, more than any account holds: a larger figure is a broken answer
CREDITS_PATH = "/credits"
KEYS_PATH = "/keys"
PAGE_SIZE = 100  # keys per page of GET /keys, as OpenRouter serves them
MAX_PAGES = 100  # 10,000 keys; past that the listing is refused, not read for minutes
# A real item is ~600 bytes, so a page is ~60 KB: the 64 KiB cap of /credits would refuse
# an honest page. 1 MiB is ~10 KB per key, still a bound on what one answer can cost.
MAX_KEYS_BODY = 1 << 20
MAX_TEXT = 100  # characters kept of a key's name or label (outside text that messages show)
MAX_RESET = 32  # characters kept of limit_reset ("daily", "weekly", "monthly")
# A hash is a path segment of the PATCH: only characters that cannot change the path.
_HASH = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True, slots=True)
class KeysOutcome:
    """Every enabled key of an account, from all pages, or a classified failure (never a
    partial list: keys missing from one would read as keys that went away)."""

    kind: FetchKind
    keys: tuple[ApiKey, ...] = ()
    message: str = ""
    attempts: int = 0  # HTTP requests made, over all pages
    pages: int = 0  # pages asked for, the failed one included

    @property
    def ok(self) -> bool:
        return self.kind is FetchKind.OK


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    """The result of one change to a key: ok, or a classified failure whose message says
    "the key" (the caller names it by name and label)."""

    kind: FetchKind
    message: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.kind is FetchKind.OK


# --------------------------------------------------------------------------- GET /credits


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
    return _checked(data.get(name), name, 0.0)


def _checked(value: Any, name: str, low: float) -> float | str:
    """`value` as a finite float in [low, MAX_AMOUNT], or a sentence saying what is wrong."""
    if type(value) is float and low <= value <= MAX_AMOUNT:  # the common case, at once (NaN fails)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{name} is missing or not a number"
    try:
        number = float(value)
    except OverflowError:
        return f"{name} is out of range"
    if not math.isfinite(number):
        return f"{name} is not a finite number"
    if number < low:
        return f"{name} is negative" if low == 0 else f"{name} is below -1e12 USD"
    if number > MAX_AMOUNT:
        return f"{name} is above 1e12 USD, which no account holds"
    return number


# --------------------------------------------------------------------------- GET /keys


def fetch_keys(
    session: requests.Session,
    endpoint: Endpoint,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    max_pages: int = MAX_PAGES,
) -> KeysOutcome:
    """GET {base_url}/keys page by page (`offset` in steps of 100) until a page is short,
    all by ONE deadline (`timeout` from now unless given, on `clock`): every enabled key,
    or a classified failure; more than `max_pages` full pages is a bad response."""
    until = clock() + endpoint.timeout if deadline is None else deadline
    found: dict[str, ApiKey] = {}  # by hash: a key created meanwhile shifts one onto the next page
    attempts = 0
    for page in range(max_pages):
        offset = page * PAGE_SIZE
        fetched = get_json(session, endpoint, KEYS_PATH, {"offset": str(offset)}, clock=clock,
                           sleep=sleep, deadline=until, max_body=MAX_KEYS_BODY)
        attempts += fetched.attempts
        listed = parse_keys(fetched.document) if fetched.ok else fetched.message
        if isinstance(listed, str):
            kind = fetched.kind if not fetched.ok else FetchKind.BAD_RESPONSE
            where = f"keys page {page + 1} (offset {offset})"
            return _failed(kind, f"{where}: {listed}", attempts, page + 1, found)
        for key in listed:
            found.setdefault(key.hash, key)
        if len(listed) < PAGE_SIZE:  # disabled items count: they take their place on the page
            enabled = tuple(key for key in found.values() if not key.disabled)
            return KeysOutcome(FetchKind.OK, enabled, attempts=attempts, pages=page + 1)
    most = max_pages * PAGE_SIZE
    return _failed(FetchKind.BAD_RESPONSE,
                   f"the account lists {most:,} keys or more; creditwatch reads at most {most:,}",
                   attempts, max_pages, found)


def _failed(kind: FetchKind, message: str, attempts: int, pages: int,
            known: Iterable[str]) -> KeysOutcome:
    # apihttp masked every long hex run; a hash of another shape that an earlier page
    # listed is masked here too (in any case), in case a server echoes one into a header.
    lowered = message.lower()
    for key_hash in (h for h in known if h.lower() in lowered):
        message = re.sub(re.escape(key_hash), "***", message, flags=re.IGNORECASE)
    return KeysOutcome(kind, message=message, attempts=attempts, pages=pages)


def parse_keys(document: Any) -> list[ApiKey] | str:
    """Every key of `{"data": [...]}`, disabled ones too, in order; or a sentence saying what
    is wrong, which names the item by its place and the field, never by its hash.

    Amounts are finite non-boolean numbers up to 1e12 USD, at least 0 except
    `limit_remaining` (a key can overrun its limit by requests in flight); `limit` and
    `limit_remaining` may be null. Names, labels and `limit_reset` are cut and escaped."""
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        return 'the body has no "data" list'
    keys = []
    for index, item in enumerate(data, 1):
        key = _plain_key(item) if type(item) is dict else None
        if key is None:  # anything unusual: the full checks accept it or say what is wrong
            try:
                key = _key(item)
            except _Bad as err:
                return f"item {index}: {err}"
        keys.append(key)
    return keys


# The keys read last, by hash. Most items are the same from tick to tick, and an ApiKey is
# immutable: handing back the one read before skips the check of the hash, its digest and
# the building of a new key, which is most of the cost of an item. Bounded like key_id's cache.
_READ: dict[str, ApiKey] = {}
MAX_READ = 65_536


def _plain_key(item: dict[str, Any]) -> ApiKey | None:
    """The key of a well-formed item, by cheap checks alone: a plain hash, printable text
    within its cap, float amounts in range (`limit` and `limit_remaining` also null), and a
    boolean or absent `disabled`; the key read before when its figures are all as they were.
    None for anything else (an int amount, text to escape...), which `_key` then reads, to
    the same key, or refuses with the reason."""
    get = item.get
    key_hash, name, label, reset = get("hash"), get("name"), get("label"), get("limit_reset")
    disabled = get("disabled", False)
    limit, remaining = get("limit"), get("limit_remaining")
    usage, daily = get("usage"), get("usage_daily")
    weekly, monthly = get("usage_weekly"), get("usage_monthly")
    if not (type(key_hash) is str and type(name) is str and type(label) is str
            and (reset is None or (type(reset) is str and len(reset) <= MAX_RESET and reset.isprintable()))
            and len(name) <= MAX_TEXT and name.isprintable()
            and len(label) <= MAX_TEXT and label.isprintable()
            and (disabled is False or disabled is True)
            and (limit is None or (type(limit) is float and 0.0 <= limit <= MAX_AMOUNT))
            and (remaining is None or (type(remaining) is float and -MAX_AMOUNT <= remaining <= MAX_AMOUNT))
            and type(usage) is float and 0.0 <= usage <= MAX_AMOUNT
            and type(daily) is float and 0.0 <= daily <= MAX_AMOUNT
            and type(weekly) is float and 0.0 <= weekly <= MAX_AMOUNT
            and type(monthly) is float and 0.0 <= monthly <= MAX_AMOUNT):  # NaN fails every range
        return None
    amounts = (limit, remaining, usage, daily, weekly, monthly)
    signed = 0.0 in amounts and _negative_zero(amounts)  # -0.0 == 0.0: no reuse across it
    known = None if signed else _READ.get(key_hash)
    if known is not None and (
            known.usage_daily, known.usage, known.limit_remaining, known.usage_weekly,
            known.usage_monthly, known.limit, known.disabled, known.name, known.label,
            known.limit_reset) == (daily, usage, remaining, weekly, monthly, limit, disabled, name,
                                   label, reset):
        return known  # the types are checked above, so equal figures are the same figures
    if known is not None:
        identity = known.id  # a hash read before is plain
    elif _HASH.fullmatch(key_hash):
        identity = key_id(key_hash)
    else:
        return None
    key = ApiKey(identity, key_hash, name, label, disabled, limit, remaining, reset, usage, daily,
                 weekly, monthly)
    if not signed:
        if len(_READ) >= MAX_READ:
            _READ.clear()
        _READ[key_hash] = key
    return key


def _negative_zero(amounts: tuple[float | None, ...]) -> bool:
    """Whether an amount is -0.0 (kept as read, as `_key` keeps it)."""
    for a in amounts:  # noqa: SIM110 - a loop is twice as fast as any(...) over a generator
        if a is not None and a == 0.0 and math.copysign(1.0, a) < 0.0:
            return True
    return False


class _Bad(Exception):
    """One field of one item is unusable; the message names the field."""


def _key(item: Any) -> ApiKey:
    if not isinstance(item, dict):
        raise _Bad("it is not an object")
    key_hash = _hash(item)
    return ApiKey(
        id=key_id(key_hash), hash=key_hash, name=_text(item, "name", MAX_TEXT) or "",
        label=_text(item, "label", MAX_TEXT) or "", disabled=_flag(item, "disabled"),
        limit=_optional(item, "limit", 0.0),
        limit_remaining=_optional(item, "limit_remaining", -MAX_AMOUNT),
        limit_reset=_text(item, "limit_reset", MAX_RESET),
        usage=_amount(item, "usage"), usage_daily=_amount(item, "usage_daily"),
        usage_weekly=_amount(item, "usage_weekly"), usage_monthly=_amount(item, "usage_monthly"),
    )


def _hash(item: dict[str, Any]) -> str:
    value = item.get("hash")
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise _Bad("hash is missing or not a plain identifier")
    return value


def _text(item: dict[str, Any], name: str, cap: int) -> str | None:
    """Outside text, cut to `cap` characters and escaped; None when absent or null."""
    value = item.get(name)
    if value is None:
        return None  # the API omits what a key does not have; a name is not worth failing over
    if not isinstance(value, str):
        raise _Bad(f"{name} is not text")
    return escape_controls(value[:cap])


def _flag(item: dict[str, Any], name: str) -> bool:
    value = item.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _Bad(f"{name} is not true or false")
    return value


def _amount(item: dict[str, Any], name: str) -> float:
    checked = _checked(item.get(name), name, 0.0)
    if isinstance(checked, str):
        raise _Bad(checked)
    return checked


def _optional(item: dict[str, Any], name: str, low: float) -> float | None:
    value = item.get(name)
    if value is None:
        return None  # no limit (and so nothing remaining to speak of)
    checked = _checked(value, name, low)
    if isinstance(checked, str):
        raise _Bad(checked)
    return checked


# --------------------------------------------------------------------------- PATCH /keys/{hash}


def disable_key(
    session: requests.Session,
    endpoint: Endpoint,
    key_hash: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
) -> PatchOutcome:
    """PATCH {base_url}/keys/{hash} with `{"disabled": true}` within `timeout` (or by
    `deadline`): ok once the API accepts it, else a classified failure; retried on a
    transient failure, since the change is idempotent (see the module docstring)."""
    if not _HASH.fullmatch(key_hash):
        return PatchOutcome(FetchKind.BAD_RESPONSE, attempts=0,
                            message="the key's hash is not a plain identifier; nothing was sent")
    fetched = request_json(session, endpoint, "PATCH", f"{KEYS_PATH}/{key_hash}",
                           body={"disabled": True}, retry=Retry.TRANSIENT, clock=clock,
                           sleep=sleep, deadline=deadline, redact=(key_hash,))
    if not fetched.ok:
        return PatchOutcome(fetched.kind, _patch_failure(fetched), fetched.attempts)
    if _still_enabled(fetched.document):
        return PatchOutcome(FetchKind.BAD_RESPONSE, attempts=fetched.attempts,
                            message="the API accepted the change but says the key is still enabled")
    return PatchOutcome(FetchKind.OK, attempts=fetched.attempts)


def _patch_failure(fetched: Fetched) -> str:
    if fetched.status == 404:
        return "HTTP 404: the API does not know the key (deleted meanwhile?) or base_url is wrong"
    return fetched.message


def _still_enabled(document: Any) -> bool:
    """Whether the answer (`{"data": {...the key...}}`) says the key is not disabled;
    an answer that does not say is taken at its status."""
    data = document.get("data") if isinstance(document, dict) else None
    return isinstance(data, dict) and "disabled" in data and data["disabled"] is not True
