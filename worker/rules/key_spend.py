"""key_spend: an API key spent more than a line this UTC day, week (from Monday) or month."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Literal

from worker.domain import ApiKey, Evaluation
from worker.formatting import money
from worker.rules.base import Facts, RuleType, cond, no_history
from worker.rules.keyrules import KeyRuleBase, unjudged
from worker.settings_base import Amount

PERIODS = {"day": "today", "week": "this week", "month": "this month"}
_SPENT: dict[str, Callable[[ApiKey], float]] = {  # the period's usage, no dict built per call
    "day": attrgetter("usage_daily"), "week": attrgetter("usage_weekly"),
    "month": attrgetter("usage_monthly"),
}


class KeySpendRule(KeyRuleBase):
    type: Literal["key_spend"]
    period: Literal["day", "week", "month"] = "day"
    above: Amount

    def holds(self, key: ApiKey) -> bool:
        return self.spent(key) > self.above

    def spent(self, key: ApiKey) -> float:
        return _SPENT[self.period](key)


def evaluate(rule: KeySpendRule, facts: Facts) -> Evaluation:
    verdict = unjudged(facts)
    if verdict is not None:
        return verdict
    key = facts.key
    assert key is not None
    spent = rule.spent(key)
    holds = spent > rule.above
    relation = "above" if holds else "not above"
    return Evaluation(cond(holds), f"{key.shown} spent {money(spent)} {PERIODS[rule.period]} (UTC), "
                                   f"{relation} {money(rule.above)}",
                      f"{key.name}, {money(spent)} {PERIODS[rule.period]}")


TYPE = RuleType("key_spend", KeySpendRule, evaluate, no_history, {"period": "day", "above": 5.0},
                per_key=True)
