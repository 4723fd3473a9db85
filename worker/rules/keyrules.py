"""What the per-key rule types share: which keys a rule watches, the guard's switch, and the
facts of a key that is gone."""

from __future__ import annotations

from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator

from worker.domain import ApiKey, Condition, Evaluation
from worker.rules.base import Facts
from worker.settings_base import RuleBase


class KeyRuleBase(RuleBase):
    """A rule judged once per API key; `keys` are globs over key names and labels."""

    keys: tuple[str, ...] = ("*",)
    disable_keys: Annotated[bool, Field(strict=True)] = False

    @field_validator("keys")
    @classmethod
    def _some_key(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not glob for glob in value):
            msg = 'must list at least one glob such as "ci-*" (leave it out to watch every key)'
            raise ValueError(msg)
        return value

    def watches(self, key: ApiKey) -> bool:
        if self.keys == ("*",):
            return True  # the default, and the common case with thousands of keys
        return _matches(self.keys, key.name, key.label)

    def holds(self, key: ApiKey) -> bool:
        """The rule's condition for a key, without the sentence: the cheap test that lets a
        tick skip the thousands of keys that are quiet and were never alerted."""
        raise NotImplementedError


@lru_cache(maxsize=65_536)  # the same keys come back every tick: match each name once
def _matches(globs: tuple[str, ...], name: str, label: str) -> bool:
    """Whether a key's name or label matches one of `globs`."""
    return any(fnmatchcase(name, glob) or fnmatchcase(label, glob) for glob in globs)


def unjudged(facts: Facts) -> Evaluation | None:
    """The verdict when there is no key to judge: unknown if the keys could not be read this
    tick (keep the alert as it was), resolved if the key is gone or disabled."""
    if not facts.keys_known:
        return Evaluation(Condition.UNKNOWN)
    if facts.key is None or facts.key.disabled:
        return Evaluation(Condition.FALSE, "the key is gone or disabled")
    return None
