"""The pieces every settings model is made of: strict models, durations, amounts, names,
and the fields every rule shares. Rule types build their own models from these."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator

from worker.domain import Severity
from worker.durations import DurationError, parse_duration
from worker.formatting import format_duration

DEFAULT_ACCOUNT = "default"  # the one account of settings without [[accounts]]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        msg = 'expected a duration string such as "30s", "5m" or "1h30m"'
        raise ValueError(msg)
    try:
        return parse_duration(value)
    except DurationError as err:
        raise ValueError(err.reason) from None


Duration = Annotated[
    timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)
]


def strict_number(value: object) -> object:
    """TOML booleans are not amounts, though Python treats True as 1."""
    if isinstance(value, bool):
        msg = "expected a number, not a boolean"
        raise ValueError(msg)
    return value


Amount = Annotated[float, BeforeValidator(strict_number), Field(ge=0, le=1e12)]
Percent = Annotated[float, BeforeValidator(strict_number), Field(gt=0, le=100)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def check_name(value: str) -> str:
    if not _NAME.match(value):
        msg = "must be 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        raise ValueError(msg)
    return value


class RuleBase(Model):
    """What every rule has; each rule type adds `type: Literal[...]` and its own fields."""

    # No populate_by_name: it would accept `for_` in the file as a silent alias of `for`.
    name: str
    type: str
    severity: Severity = Severity.WARNING
    channels: tuple[str, ...] | None = None
    accounts: tuple[str, ...] | None = None
    inhibited_by: tuple[str, ...] = ()
    for_: Duration | None = Field(default=None, alias="for")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("channels")
    @classmethod
    def _some_channel(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            msg = "must name at least one channel (leave it out to notify every channel)"
            raise ValueError(msg)
        return value

    @field_validator("accounts")
    @classmethod
    def _some_account(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            msg = "must name at least one account (leave it out to watch every account)"
            raise ValueError(msg)
        return value

    def applies_to(self, account: str) -> bool:
        """Whether this rule watches `account` (its own list, or every account)."""
        return self.accounts is None or account in self.accounts

    @property
    def pending_for(self) -> timedelta:
        return self.for_ or timedelta(0)
