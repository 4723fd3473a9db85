"""burn_rate: USD spent per hour over a window is above a line (with an optional short window)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from worker.domain import Condition, Evaluation
from worker.forecast import burn_rate
from worker.formatting import format_duration, rate
from worker.rules.base import Facts, RuleType, cond
from worker.settings_base import Duration, RuleBase, strict_number


class BurnRateRule(RuleBase):
    type: Literal["burn_rate"]
    window: Duration
    short_window: Duration | None = None
    above: Annotated[float, BeforeValidator(strict_number), Field(gt=0, le=1e12)]

    @model_validator(mode="after")
    def _short_is_shorter(self) -> BurnRateRule:
        if self.short_window is not None and self.short_window >= self.window:
            msg = "short_window must be shorter than window"
            raise ValueError(msg)
        return self


def evaluate(rule: BurnRateRule, facts: Facts) -> Evaluation:
    if facts.latest is None:
        return Evaluation(Condition.UNKNOWN)
    burn = burn_rate(facts.history, facts.now, rule.window)
    short = None if rule.short_window is None else burn_rate(facts.history, facts.now, rule.short_window)
    if burn is None or (rule.short_window is not None and short is None):
        return Evaluation(Condition.UNKNOWN)
    holds = burn > rule.above and (short is None or short > rule.above)
    summary = f"burning {rate(burn)} over {format_duration(rule.window)}"
    if short is not None:
        summary += f" ({rate(short)} over {format_duration(rule.short_window or timedelta())})"
    relation = "above" if holds else "not above"
    return Evaluation(cond(holds), f"{summary}, {relation} {rate(rule.above)}", f"burning {rate(burn)}")


def _window(rule: BurnRateRule) -> timedelta:
    return rule.window


TYPE = RuleType("burn_rate", BurnRateRule, evaluate, _window, {"window": "1h", "above": 5.0})
