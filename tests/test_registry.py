"""The rule registry is whole: every rule type has every part, and everything that lists
rule types derives from the registry (a type missing any part fails here, not as a
"rule failed and was skipped" line every tick)."""

from __future__ import annotations

import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.domain import ApiKey, Evaluation, FetchStreak, Reading, key_id
from worker.rules import REGISTRY, RULE_TYPES, Facts, evaluate
from worker.settings import SettingsError, parse_settings
from worker.settings_base import RuleBase

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
README = Path(__file__).resolve().parent.parent / "README.md"


def rule_from_settings(name: str) -> RuleBase:
    entry = REGISTRY[name]
    table = {"name": "r", "type": name, **entry.example}
    lines = "\n".join(f"{k} = {_toml(v)}" for k, v in table.items())
    settings = parse_settings(f"[[rules]]\n{lines}\n", {})
    return settings.rules[0]


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


@pytest.mark.parametrize("name", RULE_TYPES)
def test_every_type_has_every_part(name: str) -> None:
    entry = REGISTRY[name]
    assert entry.name == name
    # The model's `type` field accepts exactly this name.
    assert typing.get_args(entry.model.model_fields["type"].annotation) == (name,)
    # Its example is valid settings, parsed through the one Rule union into its own model.
    rule = rule_from_settings(name)
    assert type(rule) is entry.model
    # Dispatch reaches its evaluator, with and without a reading this tick.
    reading = Reading(NOW, 100.0, 10.0)
    key = ApiKey(key_id("h"), "h", "ci-runner", "sk-or-v1-abc...xyz", False, 10.0, 1.0, None, 9.0, 9.0,
                 9.0, 9.0)
    for latest in (reading, None):
        for known, judged in ((False, None), (True, None), (True, key)):
            facts = Facts(NOW, latest, [Reading(NOW - timedelta(hours=1), 100.0, 5.0), reading],
                          FetchStreak(1, False, "x"), account="a", key=judged, keys_known=known)
            assert isinstance(evaluate(rule, facts), Evaluation)
    assert entry.history(rule) >= timedelta(0)
    # The README documents it.
    assert f"**{name}**" in README.read_text(encoding="utf-8")


def test_the_accepted_types_are_the_registry() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings("[[rules]]\nname = 'r'\ntype = 'nope'\n", {})
    [line] = caught.value.problems
    assert line.endswith(f"(expected one of {', '.join(REGISTRY)})"), line


def test_history_span_comes_from_each_types_own_window() -> None:
    settings = parse_settings(
        "[forecast]\nwindow = '1h'\n"
        "[[rules]]\nname = 'a'\ntype = 'burn_rate'\nwindow = '3h'\nabove = 1.0\n"
        "[[rules]]\nname = 'b'\ntype = 'runway'\nwindow = '2h'\nbelow = '1d'\n", {})
    assert settings.history_span == timedelta(hours=3)
