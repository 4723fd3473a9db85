"""runway: the forecast time until the remaining balance reaches zero is below a span."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from worker.domain import Condition, Evaluation
from worker.forecast import burn_rate, runway_hours
from worker.formatting import format_duration, hours_text
from worker.rules.base import Facts, RuleType, cond
from worker.settings_base import Duration, RuleBase


class RunwayRule(RuleBase):
    type: Literal["runway"]
    window: Duration
    below: Duration


def evaluate(rule: RunwayRule, facts: Facts) -> Evaluation:
    if facts.latest is None:
        return Evaluation(Condition.UNKNOWN)
    burn = burn_rate(facts.history, facts.now, rule.window)
    if burn is None:
        return Evaluation(Condition.UNKNOWN)
    hours = runway_hours(facts.latest.remaining, burn)
    if hours is None:
        return Evaluation(Condition.FALSE, "no spend in the window")
    limit = rule.below.total_seconds() / 3600
    holds = hours < limit
    relation = "less" if holds else "no less"
    summary = f"about {hours_text(hours)} of credit left, {relation} than {format_duration(rule.below)}"
    return Evaluation(cond(holds), summary, f"about {hours_text(hours)} left")


def _window(rule: RunwayRule) -> timedelta:
    return rule.window


TYPE = RuleType("runway", RunwayRule, evaluate, _window, {"window": "6h", "below": "24h"})
