"""What a rule type is made of, and what a rule may look at this tick."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from worker.domain import ApiKey, Condition, Evaluation, FetchStreak, Reading
from worker.settings_base import RuleBase


@dataclass(frozen=True, slots=True)
class Facts:
    """What a rule may look at this tick, for one account; `latest` is None when this tick's
    fetch failed. For a per-key rule, `key` is the key judged (None: it is gone or disabled)
    and `keys_known` says whether the account's keys could be read this tick."""

    now: datetime
    latest: Reading | None
    history: Sequence[Reading]
    streak: FetchStreak
    firing: bool = False
    account: str = "default"
    key: ApiKey | None = None
    keys_known: bool = False


R = TypeVar("R", bound=RuleBase)


@dataclass(frozen=True)
class RuleType(Generic[R]):
    """One rule type, whole: its name in `type = "..."`, its settings model, its condition
    over the facts, how far back its readings reach, and a minimal example table (for the
    registry's own test and the docs)."""

    name: str
    model: type[R]
    evaluate: Callable[[R, Facts], Evaluation]
    history: Callable[[R], timedelta]
    example: Mapping[str, Any]
    per_key: bool = False  # one alert per API key of the account, from GET /keys


def no_history(_rule: Any) -> timedelta:
    return timedelta(0)


def cond(holds: bool) -> Condition:
    return Condition.TRUE if holds else Condition.FALSE
