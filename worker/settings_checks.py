"""The checks behind parse_settings that need no model: nesting depth, ${VAR} expansion,
one `path: message` line per validation error, cross-references on the raw document, and
the API key's shape.

A value that came from `${VAR}` may be a secret: no line built here quotes it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from worker.rules import RULE_TYPES
from worker.settings_base import DEFAULT_ACCOUNT

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VAR = re.compile(r"\$\{([^}]*)\}|\$\$")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Our own settings nest four levels at most (rules -> [i] -> channels -> [j]); anything far
# deeper is a broken or hostile file, and deep recursion in tomllib, the ${VAR} walk or
# pydantic would end in a RecursionError traceback.
MAX_DEPTH = 32
TOO_DEEP = f"settings: arrays or tables nested more than {MAX_DEPTH} levels deep"
# What an OpenRouter key can hold: printable ASCII, no space. Anything else cannot travel in
# an HTTP header and is a paste accident (a trailing newline, a non-breaking space...).
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
# Where a value from ${VAR} goes, for paths whose messages would otherwise quote it.
Sourced = dict[str, list[str]]


class SettingsError(Exception):
    """Settings that cannot be used; `problems` holds one `path: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def too_deep(doc: Any) -> bool:
    """Whether tables and arrays nest past MAX_DEPTH (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return False


def expand(node: Any, environ: Mapping[str, str], path: str, problems: list[str],
           sourced: Sourced) -> Any:
    """`node` with ${VAR} expanded in every string; `sourced` learns which path got which values."""
    if isinstance(node, dict):
        return {k: expand(v, environ, _join(path, k), problems, sourced) for k, v in node.items()}
    if isinstance(node, list):
        return [expand(v, environ, f"{path}[{i}]", problems, sourced) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _VAR.sub(lambda m: _lookup(m, environ, path, problems, sourced), node)
    return node


def _lookup(match: re.Match[str], environ: Mapping[str, str], path: str, problems: list[str],
            sourced: Sourced) -> str:
    if match.group(0) == "$$":
        return "$"
    name = match.group(1)
    if not ENV_NAME.match(name):
        problems.append(f"{path}: '${{{name}}}' is not a valid environment variable reference")
        return ""
    if name not in environ:
        problems.append(f"{path}: environment variable {name} is not set")
        return ""
    sourced.setdefault(path, []).append(environ[name])
    return environ[name]


def scrub(problems: list[str], sourced: Sourced) -> list[str]:
    """Last guard: mask any ${VAR} value that a message about its own path still quotes.

    Values shorter than 4 characters are left: masking "1" or "s" would garble the text
    around them, and so short a value is no secret.
    """
    out = []
    for line in problems:
        path, sep, message = line.partition(": ")
        for value in sorted(_values_at(path, sourced), key=len, reverse=True):
            if len(value) >= 4:
                message = message.replace(value, "***")
        out.append(f"{path}{sep}{message}")
    return out


def _values_at(path: str, sourced: Sourced) -> list[str]:
    # A problem about a table (rules[0]) may quote any value inside it.
    below = (f"{path}.", f"{path}[")
    return [v for p, values in sourced.items() if p == path or p.startswith(below) for v in values]


def _join(path: str, key: str) -> str:
    key = _shown_key(key)
    return f"{path}{key}" if key.startswith("[") else (f"{path}.{key}" if path else key)


def _shown_key(key: str) -> str:
    """A key as the path shows it: bare when plain, else quoted and escaped on one line."""
    return key if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"


def describe(err: ValidationError, sourced: Sourced) -> list[str]:
    """One `path: message` line per validation error, never quoting a value from ${VAR}."""
    lines = []
    for item in err.errors(include_input=False, include_url=False):
        loc = _clean_loc(item["loc"])
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "type")
        path = _format_loc(loc)
        lines.append(f"{path}: {_message(item, quote=path not in sourced)}")
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


def _message(item: Any, quote: bool) -> str:
    kind = item["type"]
    if kind == "union_tag_invalid":
        tag = f"{item['ctx']['tag']!r}" if quote else "(the value of an environment variable)"
        return f"unknown rule type {tag} (expected one of {', '.join(RULE_TYPES)})"
    if kind == "union_tag_not_found":
        return f"missing 'type' (one of {', '.join(RULE_TYPES)})"
    if kind == "extra_forbidden":
        return "unknown setting"
    if kind == "missing":
        return "required setting is missing"
    msg = str(item["msg"])
    return msg.removeprefix("Value error, ")


def cross_check(doc: Any, sourced: Sourced) -> list[str]:
    """Names unique and channels defined, judged on the raw document so that these
    problems show up beside any validation errors."""
    channels = _named_tables(doc, "channels")
    rules = _named_tables(doc, "rules")
    accounts = _named_tables(doc, "accounts")
    problems = _duplicates("channels", [t.get("name") for t in channels], sourced)
    problems += _duplicates("rules", [t.get("name") for t in rules], sourced)
    problems += _duplicates("accounts", [t.get("name") for t in accounts], sourced)
    known = _names(channels)
    # Without [[accounts]], the one account from [openrouter] is called "default".
    watched = _names(accounts) if accounts else {DEFAULT_ACCOUNT}
    named = _names(rules)
    for i, rule in enumerate(rules):
        problems += _undefined(rule, i, "channels", known, "channel", sourced)
        problems += _undefined(rule, i, "accounts", watched, "account", sourced)
        name = rule.get("name")
        others = named - {name} if isinstance(name, str) else named
        problems += _undefined(rule, i, "inhibited_by", others, "rule (or itself)", sourced)
    digest = doc.get("digest") if isinstance(doc, dict) else None
    if isinstance(digest, dict):
        problems += _undefined(digest, None, "channels", known, "channel", sourced)
    return problems


def _names(tables: list[dict[str, Any]]) -> set[str]:
    return {t["name"] for t in tables if isinstance(t.get("name"), str)}


def _undefined(table: dict[str, Any], i: int | None, field: str, known: set[str], what: str,
               sourced: Sourced) -> list[str]:
    wanted = table.get(field)
    problems = []
    where = "digest" if i is None else f"rules[{i}]"
    for j, name in enumerate(wanted if isinstance(wanted, list) else []):
        if isinstance(name, str) and name not in known:
            path = f"{where}.{field}[{j}]"
            problems.append(f"{path}: undefined {what}{_quoted(name, path, sourced)}")
    return problems


def _quoted(value: str, path: str, sourced: Sourced) -> str:
    # Names are identifiers and quoting them helps, unless they came from ${VAR}.
    return " (from an environment variable)" if path in sourced else f" {value!r}"


def _named_tables(doc: Any, section: str) -> list[dict[str, Any]]:
    items = doc.get(section) if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return []
    return [t if isinstance(t, dict) else {} for t in items]


def _duplicates(section: str, names: list[Any], sourced: Sourced) -> list[str]:
    seen: set[str] = set()
    problems = []
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in seen:
            path = f"{section}[{i}].name"
            problems.append(f"{path}: duplicate name{_quoted(name, path, sourced)}")
        seen.add(name)
    return problems


def key_problem(variable: str, value: str, setting: str = "openrouter.api_key_env") -> str | None:
    """Why the API key held in `variable` cannot be used, naming the setting and the variable,
    never the value."""
    where = f"{setting}: environment variable {variable}"
    if not value:
        return f"{where} is not set or empty (it must hold an OpenRouter management key)"
    if _KEY_CHARS.fullmatch(value):
        return None
    at = next(i for i, ch in enumerate(value, 1) if not _KEY_CHARS.fullmatch(ch))
    return (f"{where} holds a character that is not printable ASCII or is a space (character "
            f"{at} of {len(value)}); an OpenRouter key is printable ASCII without spaces")
