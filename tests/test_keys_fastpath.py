"""The fast path of parse_keys (worker.openrouter._plain_key) reads every item it accepts
exactly as the full checks (`_key`) do, including from its cache of keys read before; what
it does not accept goes to the full checks (tests/test_keys_api.py covers their answers)."""

from __future__ import annotations

import math
from typing import Any

from fakes import key_item
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker import openrouter
from worker.domain import ApiKey

AMOUNTS = ("limit", "limit_remaining", "usage", "usage_daily", "usage_weekly", "usage_monthly")
hashes = st.sampled_from(["h1", "h2", "abc_DEF-9", "bad hash", "a" * 129, "é"]) | st.text(
    "0123456789abcdef_-", min_size=1, max_size=5)
numbers = st.sampled_from([0.0, -0.0, 1.0, 1, 0, True, False, None, math.nan, math.inf, -math.inf, -1.0,
                           1e12, 1e12 + 1, -1e12, -1e12 - 1, 10**400, "1", 2.5, -2.5]) | st.floats() \
    | st.integers()
texts = st.sampled_from(["a", "", "x" * 100, "x" * 101, "a\nb", None, 1, True, "daily", "d" * 33, "d" * 32,
                         "\u202e"]) | st.text(max_size=5)
FIELDS = ("hash", "name", "label", "disabled", "limit_reset", *AMOUNTS)
# A well-formed item with one or two of its fields replaced: where a fast path goes wrong.
near_valid = st.builds(
    lambda name, limit, changes: {**key_item(name, limit=limit, usage_daily=1.5), **changes},
    st.sampled_from(["a", "b"]), st.sampled_from([None, 10.0]),
    st.dictionaries(st.sampled_from(FIELDS), numbers | texts | hashes, max_size=2),
)
items = near_valid | st.fixed_dictionaries({}, optional={
    "hash": hashes, "name": texts, "label": texts,
    "disabled": st.sampled_from([True, False, None, 0, 1, "true"]),
    "limit": numbers, "limit_remaining": numbers, "limit_reset": texts, "usage": numbers,
    "usage_daily": numbers, "usage_weekly": numbers, "usage_monthly": numbers,
}) | st.builds(lambda n, d: key_item(n, usage_daily=d), st.sampled_from(["a", "b"]),
               st.sampled_from([0.0, -0.0, 1.0]))


def _same(fast: ApiKey, full: ApiKey) -> bool:
    def signs(k: ApiKey) -> list[tuple[type, float]]:
        return [(type(v), math.copysign(1.0, v) if isinstance(v, float) else 0.0)
                for v in (getattr(k, f) for f in AMOUNTS)]
    return repr(fast) == repr(full) and fast.hash == full.hash and signs(fast) == signs(full)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(items, max_size=4))
def test_what_the_fast_path_accepts_it_reads_as_the_full_checks_do(batch: list[dict[str, Any]]) -> None:
    for _ in range(2):  # the second read may come from the keys read before
        for item in batch:
            fast = openrouter._plain_key(item)
            if fast is None:
                continue
            full = openrouter._key(item)  # accepted by the fast path: the full checks accept it too
            assert _same(fast, full), (item, fast, full)
        parsed = openrouter.parse_keys({"data": batch})
        if not isinstance(parsed, str):
            assert all(_same(a, openrouter._key(i)) for a, i in zip(parsed, batch, strict=True))


BOUNDARIES: dict[str, list[Any]] = {
    "hash": ["a" * 128, "a" * 129, "", "a b", "é", None, 1],
    "name": ["x" * openrouter.MAX_TEXT, "x" * (openrouter.MAX_TEXT + 1), "", "a\nb", "\u202e", None, 1],
    "label": ["x" * openrouter.MAX_TEXT, "x" * (openrouter.MAX_TEXT + 1), "a\tb", None, 1],
    "limit_reset": ["d" * openrouter.MAX_RESET, "d" * (openrouter.MAX_RESET + 1), "da\ny", None, 1],
    "disabled": [True, False, None, 0, 1, "true"],
    **{field: [0.0, -0.0, 1.0, 1, True, None, math.nan, math.inf, -1e-9, -1.0, -openrouter.MAX_AMOUNT,
               -openrouter.MAX_AMOUNT * 1.000001, openrouter.MAX_AMOUNT, openrouter.MAX_AMOUNT * 1.000001,
               "1"] for field in AMOUNTS},
}


def test_every_field_at_its_boundaries_reads_as_the_full_checks_do() -> None:
    checked = 0
    for field, values in BOUNDARIES.items():
        for value in values:
            for limit in (None, 10.0):
                item = {**key_item("edge", limit=limit, usage_daily=1.5), field: value}
                fast = openrouter._plain_key(item)
                if fast is not None:
                    assert _same(fast, openrouter._key(item)), (field, value)
                    checked += 1
                got = openrouter.parse_keys({"data": [item]})
                try:
                    full = openrouter._key(item)
                except openrouter._Bad as err:  # refused: with the full checks' own words
                    assert got == f"item 1: {err}", (field, value)
                else:
                    assert not isinstance(got, str) and _same(got[0], full), (field, value)
    assert checked > 50  # the fast path took part (most of the values are ones it refuses)
