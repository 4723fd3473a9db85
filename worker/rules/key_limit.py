"""key_limit: what is left of an API key's own limit is below a line (USD or a percent of it)."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from worker.domain import ApiKey, Condition, Evaluation
from worker.formatting import money
from worker.rules.base import Facts, RuleType, cond, no_history
from worker.rules.keyrules import KeyRuleBase, unjudged
from worker.settings_base import Amount, Percent


class KeyLimitRule(KeyRuleBase):
    type: Literal["key_limit"]
    below: Amount | None = None
    below_percent: Percent | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> KeyLimitRule:
        if (self.below is None) == (self.below_percent is None):
            msg = "give exactly one of below (USD of limit_remaining) or below_percent (of limit)"
            raise ValueError(msg)
        return self

    def holds(self, key: ApiKey) -> bool:
        remaining = key.remaining
        return remaining is not None and key.limit is not None and remaining < self.line(key)

    def line(self, key: ApiKey) -> float:
        if self.below is not None:
            return self.below
        return (key.limit or 0.0) * (self.below_percent or 0.0) / 100


def evaluate(rule: KeyLimitRule, facts: Facts) -> Evaluation:
    verdict = unjudged(facts)
    if verdict is not None:
        return verdict
    key = facts.key
    assert key is not None
    remaining = key.remaining
    if remaining is None or key.limit is None:
        return Evaluation(Condition.FALSE, f"{key.shown} has no limit")
    line = rule.line(key)
    holds = remaining < line
    relation = "below" if holds else "not below"
    return Evaluation(cond(holds), f"{key.shown}: {money(remaining)} of its {money(key.limit)} limit "
                                   f"left, {relation} {money(line)}",
                      f"{key.name}, {money(remaining)} of {money(key.limit)} left")


TYPE = RuleType("key_limit", KeyLimitRule, evaluate, no_history, {"below_percent": 10.0}, per_key=True)
