"""The checks behind parse_settings that need no model: ${VAR} expansion, one
`path: message` line per validation error, and cross-references on the raw document."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

RULE_TYPES = ("threshold", "burn_rate", "runway", "fetch_failure")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VAR = re.compile(r"\$\{([^}]*)\}|\$\$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class SettingsError(Exception):
    """Settings that cannot be used; `problems` holds one `path: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def expand(node: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: expand(v, environ, _join(path, k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [expand(v, environ, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _VAR.sub(lambda m: _lookup(m, environ, path, problems), node)
    return node


def _lookup(match: re.Match[str], environ: Mapping[str, str], path: str, problems: list[str]) -> str:
    if match.group(0) == "$$":
        return "$"
    name = match.group(1)
    if not ENV_NAME.match(name):
        problems.append(f"{path}: '${{{name}}}' is not a valid environment variable reference")
        return ""
    if name not in environ:
        problems.append(f"{path}: environment variable {name} is not set")
        return ""
    return environ[name]


def _join(path: str, key: str) -> str:
    key = _shown_key(key)
    return f"{path}{key}" if key.startswith("[") else (f"{path}.{key}" if path else key)


def _shown_key(key: str) -> str:
    """A key as the path shows it: bare when plain, else quoted and escaped on one line."""
    return key if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"


def describe(err: ValidationError) -> list[str]:
    lines = []
    for item in err.errors(include_input=False, include_url=False):
        loc = _clean_loc(item["loc"])
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "type")
        lines.append(f"{_format_loc(loc)}: {_message(item)}")
    return lines or ["settings: invalid"]


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # A discriminated union puts the tag in the path: rules.0.threshold.below.
    if len(loc) >= 3 and loc[0] == "rules" and loc[2] in RULE_TYPES:
        return loc[:2] + loc[3:]
    return loc


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out or "settings"


def _message(item: Any) -> str:
    kind = item["type"]
    if kind == "union_tag_invalid":
        return f"unknown rule type {item['ctx']['tag']!r} (expected one of {', '.join(RULE_TYPES)})"
    if kind == "union_tag_not_found":
        return f"missing 'type' (one of {', '.join(RULE_TYPES)})"
    if kind == "extra_forbidden":
        return "unknown setting"
    if kind == "missing":
        return "required setting is missing"
    msg = str(item["msg"])
    return msg.removeprefix("Value error, ")


def cross_check(doc: Any) -> list[str]:
    """Names unique and channels defined, judged on the raw document so that these
    problems show up beside any validation errors."""
    channels = _named_tables(doc, "channels")
    rules = _named_tables(doc, "rules")
    problems = _duplicates("channels", [t.get("name") for t in channels])
    problems += _duplicates("rules", [t.get("name") for t in rules])
    known = {t.get("name") for t in channels if isinstance(t.get("name"), str)}
    for i, rule in enumerate(rules):
        wanted = rule.get("channels")
        for j, name in enumerate(wanted if isinstance(wanted, list) else []):
            if isinstance(name, str) and name not in known:
                problems.append(f"rules[{i}].channels[{j}]: undefined channel {name!r}")
    return problems


def _named_tables(doc: Any, section: str) -> list[dict[str, Any]]:
    items = doc.get(section) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return []
    return [t if isinstance(t, dict) else {} for t in items]


def _duplicates(section: str, names: list[Any]) -> list[str]:
    seen: set[str] = set()
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(f"{section}[{i}].name: duplicate name {name!r}")
        seen.add(name)
    return problems
