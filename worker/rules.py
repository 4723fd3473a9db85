"""One small pure function per rule type, and a table that dispatches on type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.domain import Condition, Evaluation, FetchStreak, Reading
from worker.durations import format_duration
from worker.forecast import burn_rate, runway_hours
from worker.settings import BurnRateRule, FetchFailureRule, Rule, RunwayRule, ThresholdRule


@dataclass(frozen=True, slots=True)
class Facts:
    """What a rule may look at this tick; `latest` is None when this tick's fetch failed."""

    now: datetime
    latest: Reading | None
    history: Sequence[Reading]
    streak: FetchStreak
    firing: bool = False


def money(value: float) -> str:
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def threshold(rule: ThresholdRule, facts: Facts) -> Evaluation:
    if facts.latest is None:
        return Evaluation(Condition.UNKNOWN)
    remaining = facts.latest.remaining
    limit, described = _limit(rule, facts.latest)
    if facts.firing:
        clear = rule.clear_above if rule.clear_above is not None else limit
        holds = remaining <= clear
    else:
        holds = remaining < limit
    relation = "below" if holds else "above"
    if facts.firing and rule.clear_above is not None:
        described = money(rule.clear_above)  # the line a resolve has to cross
    if holds and facts.firing and remaining >= limit:
        relation = "not yet back above"
    return Evaluation(_cond(holds), f"remaining {money(remaining)} is {relation} {described}")


def _limit(rule: ThresholdRule, latest: Reading) -> tuple[float, str]:
    if rule.below is not None:
        return rule.below, money(rule.below)
    percent = rule.below_percent or 0.0
    limit = latest.total_credits * percent / 100
    return limit, f"{percent:g}% of {money(latest.total_credits)} ({money(limit)})"


def burn(rule: BurnRateRule, facts: Facts) -> Evaluation:
    if facts.latest is None:
        return Evaluation(Condition.UNKNOWN)
    rate = burn_rate(facts.history, facts.now, rule.window)
    short = None if rule.short_window is None else burn_rate(facts.history, facts.now, rule.short_window)
    if rate is None or (rule.short_window is not None and short is None):
        return Evaluation(Condition.UNKNOWN)
    holds = rate > rule.above and (short is None or short > rule.above)
    summary = f"burning ${rate:,.2f}/h over {format_duration(rule.window)}"
    if short is not None:
        summary += f" (${short:,.2f}/h over {format_duration(rule.short_window or timedelta())})"
    relation = "above" if holds else "not above"
    return Evaluation(_cond(holds), f"{summary}, {relation} ${rule.above:,.2f}/h")


def runway(rule: RunwayRule, facts: Facts) -> Evaluation:
    if facts.latest is None:
        return Evaluation(Condition.UNKNOWN)
    rate = burn_rate(facts.history, facts.now, rule.window)
    if rate is None:
        return Evaluation(Condition.UNKNOWN)
    hours = runway_hours(facts.latest.remaining, rate)
    if hours is None:
        return Evaluation(Condition.FALSE, "no spend in the window")
    limit = rule.below.total_seconds() / 3600
    holds = hours < limit
    relation = "less" if holds else "no less"
    summary = f"about {hours_text(hours)} of credit left, {relation} than {format_duration(rule.below)}"
    return Evaluation(_cond(holds), summary)


def fetch_failure(rule: FetchFailureRule, facts: Facts) -> Evaluation:
    streak = facts.streak
    if streak.failures == 0:
        return Evaluation(Condition.FALSE, "the balance is readable again")
    if streak.auth:
        return Evaluation(
            Condition.TRUE,
            "OpenRouter refused the API key: it is invalid or is not a management key",
        )
    holds = streak.failures >= rule.consecutive
    last = f": {streak.last_error}" if streak.last_error else ""
    return Evaluation(_cond(holds), f"{streak.failures} fetches in a row failed{last}")


def hours_text(hours: float) -> str:
    if hours < 1:
        return f"{max(1, round(hours * 60))}m"
    if hours < 48:
        return f"{hours:.1f}h".replace(".0h", "h")
    return f"{hours / 24:.1f}d".replace(".0d", "d")


def _cond(holds: bool) -> Condition:
    return Condition.TRUE if holds else Condition.FALSE


_DISPATCH: dict[str, Callable[[Any, Facts], Evaluation]] = {
    "threshold": threshold,
    "burn_rate": burn,
    "runway": runway,
    "fetch_failure": fetch_failure,
}


def evaluate(rule: Rule, facts: Facts) -> Evaluation:
    """The rule's condition over the facts, by its type."""
    return _DISPATCH[rule.type](rule, facts)

