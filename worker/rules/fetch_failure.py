"""fetch_failure: the balance could not be read `consecutive` times in a row (at once for 401/403)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from worker.domain import Condition, Evaluation, Severity
from worker.rules.base import Facts, RuleType, cond, no_history
from worker.settings_base import RuleBase, strict_number


class FetchFailureRule(RuleBase):
    type: Literal["fetch_failure"]
    severity: Severity = Severity.WARNING
    consecutive: Annotated[int, BeforeValidator(strict_number), Field(strict=True, ge=1, le=10_000)] = 3


def evaluate(rule: FetchFailureRule, facts: Facts) -> Evaluation:
    streak = facts.streak
    if streak.failures == 0:
        return Evaluation(Condition.FALSE, "the balance is readable again")
    if streak.auth:
        return Evaluation(
            Condition.TRUE,
            "OpenRouter refused the API key: it is invalid or is not a management key",
            "the API key is refused",
        )
    holds = streak.failures >= rule.consecutive
    last = f": {streak.last_error}" if streak.last_error else ""
    return Evaluation(cond(holds), f"{streak.failures} fetches in a row failed{last}",
                      f"{streak.failures} fetches failed")


TYPE = RuleType("fetch_failure", FetchFailureRule, evaluate, no_history, {"consecutive": 3})
