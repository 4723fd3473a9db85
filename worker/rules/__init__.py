"""The rule types: each is one module (its settings model, its condition, the history it
needs); this registry is the one list of them. The settings' `Rule` union, the accepted
`type` names, dispatch and how far back the history reaches all derive from it.

Adding a rule type: a module beside these with a `TYPE = RuleType(...)`, one line below,
its tests, and its section in the README.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from worker.domain import Evaluation
from worker.rules import burn_rate, fetch_failure, key_limit, key_spend, runway, threshold
from worker.rules.base import Facts, RuleType
from worker.rules.burn_rate import BurnRateRule
from worker.rules.fetch_failure import FetchFailureRule
from worker.rules.key_limit import KeyLimitRule
from worker.rules.key_spend import KeySpendRule
from worker.rules.keyrules import KeyRuleBase
from worker.rules.runway import RunwayRule
from worker.rules.threshold import ThresholdRule
from worker.settings_base import RuleBase

REGISTRY: dict[str, RuleType[Any]] = {
    t.name: t for t in (threshold.TYPE, burn_rate.TYPE, runway.TYPE, fetch_failure.TYPE, key_limit.TYPE,
                        key_spend.TYPE)
}
RULE_TYPES = tuple(REGISTRY)

__all__ = ["REGISTRY", "RULE_TYPES", "BurnRateRule", "Facts", "FetchFailureRule", "KeyLimitRule",
           "KeyRuleBase", "KeySpendRule", "RuleType", "RunwayRule", "ThresholdRule", "evaluate",
           "history_span", "is_per_key"]


def evaluate(rule: RuleBase, facts: Facts) -> Evaluation:
    """The rule's condition over the facts, by its type."""
    return REGISTRY[rule.type].evaluate(rule, facts)


def history_span(rules: Iterable[RuleBase], floor: timedelta) -> timedelta:
    """How far back any of `rules` looks, and at least `floor` (the status forecast's window)."""
    return max([floor, *(REGISTRY[r.type].history(r) for r in rules)])


def is_per_key(rule: RuleBase) -> bool:
    """Whether the rule is judged once per API key (so its account's keys must be read)."""
    return REGISTRY[rule.type].per_key
