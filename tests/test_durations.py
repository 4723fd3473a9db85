"""Durations: the "1h30m" strings operators write, and their round trip."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.durations import MAX_SECONDS, DurationError, parse_duration
from worker.formatting import format_duration

FAST = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("1s", timedelta(seconds=1)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("2d3h", timedelta(days=2, hours=3)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("90m", timedelta(minutes=90)),
        ("1h0m", timedelta(hours=1)),
        ("0h5m", timedelta(minutes=5)),
        ("36500d", timedelta(days=36500)),
        (" 5m ", timedelta(minutes=5)),
        ("2w", timedelta(weeks=2)),
        ("1y", timedelta(days=365)),
        ("1y2w3d", timedelta(days=365 + 14 + 3)),
        ("100y", timedelta(days=36500)),
    ],
)
def test_valid_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "0s",
        "0d0h0m0s",
        "1x",
        "5",
        "m5",
        "m",
        "1m1h",  # wrong order
        "1s1d",
        "1h1h",  # a unit twice
        "-5m",
        "+5m",
        "1.5h",
        "1h 30m",
        "5M",
        "5 m",
        "1ms",
        "1d1w",  # weeks come before days
        "1w1y",
        "101y",
        "36501d",  # more than 100 years
        f"{MAX_SECONDS + 1}s",
        "9999999999999999999999d",
        "1" * 5000 + "s",  # past Python's int-from-string digit limit
        "\u0663s",  # ARABIC-INDIC DIGIT THREE: \d matches it, a duration must not
        "５m",  # FULLWIDTH DIGIT FIVE
    ],
)
def test_invalid_durations(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize("value", [None, 5, 5.0, True, b"5m", ["5m"], timedelta(minutes=5)])
def test_non_strings_are_rejected(value: object) -> None:
    with pytest.raises(DurationError):
        parse_duration(value)  # type: ignore[arg-type]


def test_exactly_100_years_is_allowed() -> None:
    assert parse_duration(f"{MAX_SECONDS}s") == timedelta(seconds=MAX_SECONDS)


def test_error_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


@pytest.mark.parametrize("text", ["SECRET-42x", "0s", "999999y", "1" * 40 + "s"])
def test_error_reason_never_quotes_the_text(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    assert text not in caught.value.reason
    assert caught.value.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(seconds=30), "30s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=2, hours=3), "2d3h"),
        (timedelta(days=1, seconds=1), "1d1s"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(days=30), "30d"),  # weeks are accepted on input, never written
        (timedelta(days=366), "1y1d"),
        (timedelta(seconds=90.9), "1m30s"),  # seconds precision
        (timedelta(0), "0s"),
        (timedelta(seconds=-5), "0s"),
    ],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


seconds = st.integers(min_value=1, max_value=MAX_SECONDS)


@FAST
@given(seconds)
def test_round_trip_from_timedelta(n: int) -> None:
    td = timedelta(seconds=n)
    text = format_duration(td)
    assert parse_duration(text) == td
    assert format_duration(parse_duration(text)) == text


@FAST
@given(
    st.integers(0, 40), st.integers(0, 100), st.integers(0, 400), st.integers(0, 100),
    st.integers(0, 1000), st.integers(0, 100_000),
)
def test_any_ordered_combination_parses_to_its_sum(
    y: int, w: int, d: int, h: int, m: int, s: int
) -> None:
    parts = [(y, "y"), (w, "w"), (d, "d"), (h, "h"), (m, "m"), (s, "s")]
    text = "".join(f"{n}{u}" for n, u in parts if n)
    total = (y * 365 + w * 7 + d) * 86400 + h * 3600 + m * 60 + s
    if total == 0:
        return
    assert parse_duration(text) == timedelta(seconds=total)
    # The shortest form is canonical: it parses back to the same value.
    assert parse_duration(format_duration(timedelta(seconds=total))) == timedelta(seconds=total)


@FAST
@given(st.text(max_size=30))
def test_arbitrary_text_parses_or_raises_duration_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except DurationError:
        return
    assert timedelta(0) < value <= timedelta(seconds=MAX_SECONDS)
