"""threshold: the remaining balance is below a line, in USD or as a percent of total_credits."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from worker.domain import Condition, Evaluation, Reading
from worker.formatting import money
from worker.rules.base import Facts, RuleType, cond, no_history
from worker.settings_base import Amount, Percent, RuleBase


class ThresholdRule(RuleBase):
    type: Literal["threshold"]
    below: Amount | None = None
    below_percent: Percent | None = None
    clear_above: Amount | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> ThresholdRule:
        if (self.below is None) == (self.below_percent is None):
            msg = "give exactly one of below (USD) or below_percent"
            raise ValueError(msg)
        if self.clear_above is not None and self.below is not None and self.clear_above < self.below:
            msg = "clear_above must be at least below"
            raise ValueError(msg)
        return self


def evaluate(rule: ThresholdRule, facts: Facts) -> Evaluation:
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
    return Evaluation(cond(holds), f"remaining {money(remaining)} is {relation} {described}",
                      f"{money(remaining)} left")


def _limit(rule: ThresholdRule, latest: Reading) -> tuple[float, str]:
    if rule.below is not None:
        return rule.below, money(rule.below)
    percent = rule.below_percent or 0.0
    limit = latest.total_credits * percent / 100
    return limit, f"{percent:g}% of {money(latest.total_credits)} ({money(limit)})"


TYPE = RuleType("threshold", ThresholdRule, evaluate, no_history, {"below": 10.0})
