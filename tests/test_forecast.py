"""Burn rate (least-squares slope of total_usage) and runway."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worker.domain import Reading
from worker.forecast import burn_rate, runway_hours

FAST = settings(max_examples=200, deadline=None)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def at(hours_ago: float, usage: float, credits: float = 100.0) -> Reading:
    return Reading(NOW - timedelta(hours=hours_ago), credits, usage)


def steady(rate: float, *, span_h: float = 6, every_min: int = 5, start: float = 20.0) -> list[Reading]:
    """Readings every `every_min` minutes over `span_h` hours, spending `rate` per hour."""
    n = int(span_h * 60 / every_min)
    return [at(span_h - i * every_min / 60, start + rate * i * every_min / 60) for i in range(n + 1)]


# --------------------------------------------------------------------------- burn_rate


@pytest.mark.parametrize("rate", [0.0, 0.01, 1.0, 4.2, 250.0])
def test_steady_burn_gives_the_exact_rate(rate: float) -> None:
    assert burn_rate(steady(rate), NOW, 6 * H) == pytest.approx(rate, abs=1e-9)


def test_two_readings_use_their_time_difference_not_the_window() -> None:
    readings = [at(2, 10.0), at(1, 13.0)]  # $3 in one hour, inside a 6h window
    assert burn_rate(readings, NOW, 6 * H) == pytest.approx(3.0)


def test_two_readings_minutes_apart() -> None:
    readings = [at(10 / 60, 10.0), at(5 / 60, 10.5)]  # $0.50 in five minutes
    assert burn_rate(readings, NOW, 24 * H) == pytest.approx(6.0)


def test_only_readings_inside_the_window_count() -> None:
    old = [at(10, 0.0), at(9, 100.0)]  # a huge burn long ago
    recent = [at(2, 100.0), at(1, 101.0)]
    assert burn_rate(old + recent, NOW, 3 * H) == pytest.approx(1.0)


def test_window_edges_are_inclusive() -> None:
    readings = [at(3, 10.0), at(0, 13.0)]
    assert burn_rate(readings, NOW, 3 * H) == pytest.approx(1.0)


def test_readings_after_now_are_ignored() -> None:
    readings = [at(2, 10.0), at(1, 11.0), at(-1, 500.0)]
    assert burn_rate(readings, NOW, 6 * H) == pytest.approx(1.0)


def test_order_of_readings_does_not_matter() -> None:
    readings = steady(2.5)
    shuffled = readings[:]
    random.Random(7).shuffle(shuffled)
    assert burn_rate(shuffled, NOW, 6 * H) == pytest.approx(burn_rate(readings, NOW, 6 * H))


def test_top_up_does_not_change_the_burn() -> None:
    base = steady(2.0)
    topped = [
        Reading(r.fetched_at, r.total_credits + (50.0 if i >= len(base) // 2 else 0.0), r.total_usage)
        for i, r in enumerate(base)
    ]
    assert burn_rate(topped, NOW, 6 * H) == pytest.approx(2.0)


def test_top_up_with_no_spend_is_zero_burn_not_negative() -> None:
    readings = [at(2, 10.0, 100.0), at(1, 10.0, 200.0), at(0.5, 10.0, 300.0)]
    assert burn_rate(readings, NOW, 6 * H) == 0.0


@pytest.mark.parametrize(
    "usages",
    [
        [10.0, 8.0],  # a refund
        [10.0, 9.0, 8.0, 7.0],  # usage falling every time
        [10.0, 0.0, 0.0],  # a reset
    ],
)
def test_decreasing_usage_never_gives_negative_burn(usages: list[float]) -> None:
    readings = [at(len(usages) - i, u) for i, u in enumerate(usages)]
    assert burn_rate(readings, NOW, 24 * H) == 0.0


def test_a_refund_does_not_hide_later_spend() -> None:
    # Spend $1/h, a $5 refund, then $1/h again: the burn is still $1/h.
    usages = [10.0, 11.0, 12.0, 7.0, 8.0, 9.0]
    readings = [at(6 - i, u) for i, u in enumerate(usages)]
    rate = burn_rate(readings, NOW, 24 * H)
    assert rate is not None and 0.5 < rate <= 1.0 + 1e-9


@pytest.mark.parametrize(
    "readings",
    [
        [],
        [at(1, 10.0)],
        [at(10, 0.0), at(1, 10.0)],  # only one inside a 6h window
        [at(1, 10.0), at(1, 12.0)],  # two at the same instant
    ],
)
def test_unknown_with_fewer_than_two_distinct_times(readings: list[Reading]) -> None:
    assert burn_rate(readings, NOW, 6 * H) is None


def test_jittered_timestamps_give_a_rate_close_to_the_truth() -> None:
    rng = random.Random(42)
    rate = 3.0
    readings = []
    for i in range(72):
        t = 6 - i * 5 / 60 + rng.uniform(-40, 40) / 3600  # +-40s of scheduling jitter
        t = min(max(t, 0.0), 6.0)
        readings.append(at(t, 20.0 + rate * (6 - t)))
    assert burn_rate(readings, NOW, 6 * H) == pytest.approx(rate, rel=1e-9)
    # Jitter in when the reading was stored (not in what it says) stays within a few percent.
    noisy = [Reading(r.fetched_at + timedelta(seconds=rng.uniform(-30, 30)), r.total_credits,
                     r.total_usage) for r in readings]
    noisy = [r for r in noisy if r.fetched_at <= NOW]
    assert burn_rate(noisy, NOW, 7 * H) == pytest.approx(rate, rel=0.03)


def test_a_gap_in_readings_does_not_create_a_spike() -> None:
    # $2/h all along; the service was down from 5h ago to 1h ago.
    before = [at(6 - i / 12, 2.0 * i / 12) for i in range(13)]
    after = [at(1 - i / 12, 10.0 + 2.0 * i / 12) for i in range(13)]
    rate = burn_rate(before + after, NOW, 6 * H)
    assert rate == pytest.approx(2.0)


def test_a_gap_with_less_spend_is_below_the_fast_segments() -> None:
    # Fast spend before and after ($6/h), almost nothing while the readings were missing.
    before = [at(6 - i / 12, 6.0 * i / 12) for i in range(13)]  # 0 -> 6
    after = [at(1 - i / 12, 7.0 + 6.0 * i / 12) for i in range(13)]  # 7 -> 13
    rate = burn_rate(before + after, NOW, 6 * H)
    true_average = 13.0 / 6
    assert rate is not None
    assert rate <= 6.0
    assert rate < 2 * true_average


# --------------------------------------------------------------------------- runway


@pytest.mark.parametrize(
    ("remaining", "rate", "expected"),
    [
        (10.0, 2.0, 5.0),
        (0.0, 2.0, 0.0),
        (-5.0, 2.0, 0.0),
        (100.0, 0.5, 200.0),
        (10.0, None, None),
        (10.0, 0.0, None),
        (10.0, -1.0, None),
    ],
)
def test_runway_hours(remaining: float, rate: float | None, expected: float | None) -> None:
    assert runway_hours(remaining, rate) == expected


# --------------------------------------------------------------------------- properties

usage_steps = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=3600),  # seconds since the previous reading
        st.floats(min_value=-50, max_value=50, allow_nan=False),  # change in usage
        st.floats(min_value=-100, max_value=500, allow_nan=False),  # change in credits
    ),
    min_size=1,
    max_size=40,
)


def build(steps: list[tuple[int, float, float]]) -> list[Reading]:
    total = sum(dt for dt, _, _ in steps)
    t = NOW - timedelta(seconds=total)
    usage, credits = 100.0, 1000.0
    out = [Reading(t, credits, usage)]
    for dt, du, dc in steps:
        t += timedelta(seconds=dt)
        usage = max(0.0, usage + du)
        credits = max(0.0, credits + dc)
        out.append(Reading(t, credits, usage))
    return out


WINDOW = 48 * H


@FAST
@given(usage_steps)
def test_burn_is_never_negative(steps: list[tuple[int, float, float]]) -> None:
    rate = burn_rate(build(steps), NOW, WINDOW)
    assert rate is not None
    assert rate >= 0.0 and math.isfinite(rate)


@FAST
@given(usage_steps, st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=41,
                             max_size=41))
def test_top_up_never_raises_the_burn(
    steps: list[tuple[int, float, float]], topups: list[float]
) -> None:
    readings = build(steps)
    extra = 0.0
    topped = []
    for r, topup in zip(readings, topups):
        extra += topup
        topped.append(Reading(r.fetched_at, r.total_credits + extra, r.total_usage))
    assert burn_rate(topped, NOW, WINDOW) == pytest.approx(burn_rate(readings, NOW, WINDOW))


@FAST
@given(usage_steps, st.floats(min_value=0.01, max_value=100))
def test_scaling_usage_scales_the_burn(steps: list[tuple[int, float, float]], k: float) -> None:
    readings = build(steps)
    scaled = [Reading(r.fetched_at, r.total_credits, r.total_usage * k) for r in readings]
    base = burn_rate(readings, NOW, WINDOW)
    assert base is not None
    assert burn_rate(scaled, NOW, WINDOW) == pytest.approx(base * k, rel=1e-6, abs=1e-9)


@FAST
@given(usage_steps)
def test_burn_lies_between_the_slowest_and_fastest_spend_between_readings(
    steps: list[tuple[int, float, float]]
) -> None:
    # The least-squares slope of a monotone series is a weighted mean of the slopes
    # between consecutive readings, so a gap can never make it spike above them.
    readings = build(steps)
    segment_rates = [
        max(0.0, b.total_usage - a.total_usage) / ((b.fetched_at - a.fetched_at).total_seconds() / 3600)
        for a, b in zip(readings, readings[1:])
    ]
    rate = burn_rate(readings, NOW, WINDOW)
    assert rate is not None
    assert min(segment_rates) - 1e-6 <= rate <= max(segment_rates) + 1e-6


@FAST
@given(
    st.floats(min_value=0.001, max_value=1e4),
    st.integers(min_value=2, max_value=60),
    st.integers(min_value=1, max_value=3600),
)
def test_steady_spend_is_recovered_at_any_spacing(rate: float, n: int, every_s: int) -> None:
    readings = [Reading(NOW - timedelta(seconds=every_s * (n - 1 - i)), 1e6,
                        5.0 + rate * every_s * i / 3600) for i in range(n)]
    window = timedelta(seconds=every_s * n)
    assert burn_rate(readings, NOW, window) == pytest.approx(rate, rel=1e-6)


@FAST
@given(
    st.floats(min_value=0.001, max_value=1e4),
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(min_value=-1e6, max_value=1e6),
)
def test_runway_is_monotone_in_remaining(rate: float, a: float, b: float) -> None:
    assume(a <= b)
    low, high = runway_hours(a, rate), runway_hours(b, rate)
    assert low is not None and high is not None
    assert 0.0 <= low <= high
