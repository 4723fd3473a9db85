"""Each rule type's condition over the facts of one tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain import Condition, FetchStreak, Reading
from worker.formatting import hours_text, money
from worker.rules import Facts, evaluate
from worker.settings import BurnRateRule, FetchFailureRule, RunwayRule, ThresholdRule

FAST = settings(max_examples=200, deadline=None)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
T, F, U = Condition.TRUE, Condition.FALSE, Condition.UNKNOWN


def threshold(**kw: Any) -> ThresholdRule:
    return ThresholdRule.model_validate({"name": "low", "type": "threshold", **kw})


def burn_rule(**kw: Any) -> BurnRateRule:
    return BurnRateRule.model_validate({"name": "fast", "type": "burn_rate", **kw})


def runway_rule(**kw: Any) -> RunwayRule:
    return RunwayRule.model_validate({"name": "runway", "type": "runway", **kw})


def fetch_rule(**kw: Any) -> FetchFailureRule:
    return FetchFailureRule.model_validate({"name": "fetch", "type": "fetch_failure", **kw})


def reading(remaining: float, credits: float = 100.0, hours_ago: float = 0.0) -> Reading:
    return Reading(NOW - timedelta(hours=hours_ago), credits, credits - remaining)


def facts(
    latest: Reading | None = None,
    history: list[Reading] | None = None,
    streak: FetchStreak | None = None,
    firing: bool = False,
) -> Facts:
    hist = history if history is not None else ([latest] if latest else [])
    return Facts(NOW, latest, hist, streak or FetchStreak(), firing)


def series(rates: list[tuple[float, float]], every_min: int = 5, credits: float = 1000.0
           ) -> list[Reading]:
    """Readings ending now; `rates` is [(hours, usd_per_hour), ...] oldest first."""
    total_h = sum(h for h, _ in rates)
    t, usage = NOW - timedelta(hours=total_h), 0.0
    out = [Reading(t, credits, usage)]
    step = timedelta(minutes=every_min)
    for hours, rate in rates:
        for _ in range(round(hours * 60 / every_min)):
            t += step
            usage += rate * every_min / 60
            out.append(Reading(t, credits, usage))
    return out


# --------------------------------------------------------------------------- threshold


@pytest.mark.parametrize(
    ("remaining", "firing", "expected"),
    [
        (5.0, False, T),
        (9.99, False, T),
        (10.0, False, F),  # "below" is strict
        (10.01, False, F),
        (50.0, False, F),
        (-3.0, False, T),  # overdrawn
        (5.0, True, T),
        (10.0, True, T),
        (10.01, True, F),  # without clear_above the limit itself resolves
    ],
)
def test_threshold_below(remaining: float, firing: bool, expected: Condition) -> None:
    ev = evaluate(threshold(below=10), facts(reading(remaining), firing=firing))
    assert ev.condition is expected
    assert "$" in ev.summary


@pytest.mark.parametrize(
    ("remaining", "credits", "firing", "expected"),
    [
        (9.0, 100.0, False, T),  # 9% of 100
        (10.0, 100.0, False, F),
        (11.0, 100.0, False, F),
        (49.0, 500.0, False, T),  # 10% of 500 is 50
        (51.0, 500.0, False, F),
        (0.0, 0.0, False, F),  # nothing bought: 10% of 0 is 0, and 0 is not below 0
        (10.0, 100.0, True, T),
        (10.5, 100.0, True, F),
    ],
)
def test_threshold_below_percent(
    remaining: float, credits: float, firing: bool, expected: Condition
) -> None:
    ev = evaluate(threshold(below_percent=10), facts(reading(remaining, credits), firing=firing))
    assert ev.condition is expected


@pytest.mark.parametrize(
    ("remaining", "firing", "expected"),
    [
        (9.0, False, T),
        (12.0, False, F),  # not firing: only `below` starts it
        (16.0, False, F),
        (9.0, True, T),
        (10.0, True, T),
        (12.0, True, T),  # firing: stays TRUE inside the band
        (15.0, True, T),  # ... until remaining > clear_above
        (15.01, True, F),
        (100.0, True, F),
    ],
)
def test_threshold_hysteresis(remaining: float, firing: bool, expected: Condition) -> None:
    rule = threshold(below=10, clear_above=15)
    assert evaluate(rule, facts(reading(remaining), firing=firing)).condition is expected


def test_a_resolve_names_the_line_it_crossed() -> None:
    """With clear_above = 15 the resolve summary said "above $10.00" (issue 8)."""
    rule = threshold(below=10, clear_above=15)
    resolved = evaluate(rule, facts(reading(16.0), firing=True))
    assert resolved.condition is F
    assert resolved.summary == "remaining $16.00 is above $15.00"
    inside = evaluate(rule, facts(reading(12.0), firing=True))
    assert inside.summary == "remaining $12.00 is not yet back above $15.00"
    fired = evaluate(rule, facts(reading(9.0), firing=False))
    assert fired.summary == "remaining $9.00 is below $10.00"


def test_threshold_hysteresis_walk() -> None:
    rule = threshold(below=10, clear_above=15)
    firing = False
    seen = []
    for remaining in [20, 12, 9, 11, 14, 15, 16, 12, 9]:
        cond = evaluate(rule, facts(reading(remaining), firing=firing)).condition
        firing = cond is T
        seen.append(cond)
    assert seen == [F, F, T, T, T, T, F, F, T]


@pytest.mark.parametrize("firing", [False, True])
def test_threshold_unknown_without_a_fresh_reading(firing: bool) -> None:
    old = [reading(1.0, hours_ago=1)]
    ev = evaluate(threshold(below=10), facts(None, history=old, firing=firing))
    assert ev.condition is U


def test_threshold_summary_names_amounts() -> None:
    ev = evaluate(threshold(below=10), facts(reading(7.5)))
    assert "$7.50" in ev.summary and "$10.00" in ev.summary


def test_threshold_summary_is_not_a_false_statement_when_false() -> None:
    ev = evaluate(threshold(below=10), facts(reading(20.0), firing=True))
    assert ev.condition is F
    assert "is below" not in ev.summary


def test_threshold_ignores_the_streak() -> None:
    ev = evaluate(threshold(below=10), facts(reading(50.0), streak=FetchStreak(9, True, "x")))
    assert ev.condition is F


# --------------------------------------------------------------------------- fetch_failure


@pytest.mark.parametrize(
    ("streak", "consecutive", "expected"),
    [
        (FetchStreak(0), 3, F),
        (FetchStreak(1), 3, F),
        (FetchStreak(2), 3, F),
        (FetchStreak(3), 3, T),
        (FetchStreak(10), 3, T),
        (FetchStreak(1), 1, T),
        (FetchStreak(1, auth=True), 3, T),  # 401/403 fire at once
        (FetchStreak(1, auth=True), 100, T),
        (FetchStreak(0, auth=True), 3, F),  # a successful fetch ends the streak
    ],
)
def test_fetch_failure(streak: FetchStreak, consecutive: int, expected: Condition) -> None:
    ev = evaluate(fetch_rule(consecutive=consecutive), facts(None, streak=streak))
    assert ev.condition is expected


def test_fetch_failure_ignores_the_balance() -> None:
    # Moves only on the streak, whether or not this tick has a reading.
    rule = fetch_rule(consecutive=2)
    assert evaluate(rule, facts(reading(0.0), streak=FetchStreak(0))).condition is F
    assert evaluate(rule, facts(None, streak=FetchStreak(2))).condition is T


def test_fetch_failure_auth_message_says_the_key_is_invalid_or_not_a_management_key() -> None:
    ev = evaluate(fetch_rule(), facts(None, streak=FetchStreak(1, auth=True, last_error="401")))
    assert ev.condition is T
    assert "invalid" in ev.summary.lower()
    assert "management key" in ev.summary.lower()


def test_fetch_failure_summary_counts_and_gives_the_error() -> None:
    ev = evaluate(fetch_rule(), facts(None, streak=FetchStreak(4, last_error="HTTP 503")))
    assert "4" in ev.summary and "HTTP 503" in ev.summary


@FAST
@given(st.integers(0, 50), st.integers(1, 50), st.booleans())
def test_fetch_failure_property(failures: int, consecutive: int, auth: bool) -> None:
    ev = evaluate(fetch_rule(consecutive=consecutive),
                  facts(None, streak=FetchStreak(failures, auth)))
    expected = failures > 0 and (auth or failures >= consecutive)
    assert ev.condition is (T if expected else F)


# --------------------------------------------------------------------------- burn_rate


def test_burn_rate_above() -> None:
    hist = series([(2, 10.0)])
    ev = evaluate(burn_rule(window="1h", above=5), facts(hist[-1], hist))
    assert ev.condition is T
    assert "$10.00/h" in ev.summary


def test_burn_rate_below_the_limit() -> None:
    hist = series([(2, 2.0)])
    assert evaluate(burn_rule(window="1h", above=5), facts(hist[-1], hist)).condition is F


def test_burn_rate_equal_to_the_limit_does_not_fire() -> None:
    hist = series([(2, 5.0)])
    assert evaluate(burn_rule(window="1h", above=5), facts(hist[-1], hist)).condition is F


def test_burn_rate_short_window_both_high() -> None:
    hist = series([(2, 10.0)])
    rule = burn_rule(window="1h", short_window="10m", above=5)
    assert evaluate(rule, facts(hist[-1], hist)).condition is T


def test_burn_rate_spike_that_stopped_is_false_with_a_short_window() -> None:
    hist = series([(0.75, 40.0), (0.25, 0.0)])  # heavy spend, then nothing for 15 minutes
    long_only = burn_rule(window="1h", above=5)
    both = burn_rule(window="1h", short_window="10m", above=5)
    assert evaluate(long_only, facts(hist[-1], hist)).condition is T
    assert evaluate(both, facts(hist[-1], hist)).condition is F


def test_burn_rate_short_spike_alone_is_false() -> None:
    hist = series([(0.9, 0.0), (0.1, 30.0)])  # quiet hour, a burst in the last 6 minutes
    rule = burn_rule(window="1h", short_window="5m", above=5)
    assert evaluate(rule, facts(hist[-1], hist)).condition is F


@pytest.mark.parametrize(
    ("hist", "latest"),
    [
        ([], None),
        (series([(1, 10.0)]), None),  # this tick's fetch failed: keep the alert as it was
        ([Reading(NOW, 100.0, 10.0)], Reading(NOW, 100.0, 10.0)),  # one reading
        ([Reading(NOW - 3 * H, 100.0, 0.0), Reading(NOW, 100.0, 50.0)],
         Reading(NOW, 100.0, 50.0)),  # only one inside the window
    ],
)
def test_burn_rate_unknown(hist: list[Reading], latest: Reading | None) -> None:
    rule = burn_rule(window="1h", above=5)
    assert evaluate(rule, facts(latest, hist)).condition is U


def test_burn_rate_unknown_when_the_short_window_has_too_few_readings() -> None:
    hist = series([(2, 10.0)], every_min=30)
    rule = burn_rule(window="1h", short_window="5m", above=5)
    assert evaluate(rule, facts(hist[-1], hist)).condition is U


def test_burn_rate_ignores_top_ups() -> None:
    hist = series([(2, 10.0)])
    topped = [Reading(r.fetched_at, r.total_credits + 20 * i, r.total_usage)
              for i, r in enumerate(hist)]
    rule = burn_rule(window="1h", above=5)
    assert evaluate(rule, facts(topped[-1], topped)).condition is T


# --------------------------------------------------------------------------- runway


def test_runway_fires_below_the_limit() -> None:
    hist = series([(6, 2.0)], credits=50.0 + 12.0)  # $2/h, $50 left: 25h
    latest = hist[-1]
    assert latest.remaining == pytest.approx(50.0)
    assert evaluate(runway_rule(window="6h", below="1d2h"), facts(latest, hist)).condition is T
    assert evaluate(runway_rule(window="6h", below="24h"), facts(latest, hist)).condition is F


def test_runway_summary_gives_the_runway() -> None:
    hist = series([(6, 2.0)], credits=40.0 + 12.0)  # 20h left
    ev = evaluate(runway_rule(window="6h", below="24h"), facts(hist[-1], hist))
    assert ev.condition is T
    assert "20h" in ev.summary


def test_runway_false_on_zero_burn() -> None:
    hist = series([(6, 0.0)], credits=0.5)
    assert evaluate(runway_rule(window="6h", below="24h"), facts(hist[-1], hist)).condition is F


def test_runway_with_nothing_left_fires() -> None:
    hist = series([(6, 1.0)], credits=6.0)
    assert hist[-1].remaining == pytest.approx(0.0)
    assert evaluate(runway_rule(window="6h", below="1h"), facts(hist[-1], hist)).condition is T


@pytest.mark.parametrize(
    ("hist", "latest"),
    [
        ([], None),
        ([Reading(NOW, 100.0, 10.0)], Reading(NOW, 100.0, 10.0)),
        (series([(6, 2.0)]), None),
    ],
)
def test_runway_unknown(hist: list[Reading], latest: Reading | None) -> None:
    assert evaluate(runway_rule(window="6h", below="24h"), facts(latest, hist)).condition is U


def test_runway_uses_its_own_window() -> None:
    # Fast burn long ago, slow burn recently: a 1h window sees the slow burn only.
    hist = series([(5, 50.0), (1, 0.5)], credits=300.0)
    latest = hist[-1]  # remaining 300 - 250.5 = 49.5
    assert evaluate(runway_rule(window="1h", below="24h"), facts(latest, hist)).condition is F
    assert evaluate(runway_rule(window="6h", below="24h"), facts(latest, hist)).condition is T


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("value", "text"),
    [(12.34, "$12.34"), (0, "$0.00"), (1234.5, "$1,234.50"), (-5, "-$5.00"), (0.005, "$0.01")],
)
def test_money(value: float, text: str) -> None:
    assert money(value) == text


@pytest.mark.parametrize(
    ("hours", "text"),
    [(9.0, "9h"), (9.5, "9.5h"), (0.5, "30m"), (0.001, "1m"), (47.9, "47.9h"), (48.0, "2d"),
     (60.0, "2.5d")],
)
def test_hours_text(hours: float, text: str) -> None:
    assert hours_text(hours) == text




@FAST
@given(
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=0, max_value=1e6),
    st.booleans(),
)
def test_threshold_property(remaining: float, below: float, band: float, firing: bool) -> None:
    rule = threshold(below=below, clear_above=below + band)
    latest = reading(remaining, credits=2e6)
    cond = evaluate(rule, facts(latest, firing=firing)).condition
    left = latest.remaining  # as the rule sees it, after float rounding
    if firing:
        assert cond is (T if left <= below + band else F)
    else:
        assert cond is (T if left < below else F)
