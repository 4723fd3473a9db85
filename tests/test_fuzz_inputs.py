"""Fuzzing every input an operator or the network controls.

(a) settings files: hypothesis breaks a valid file in the ways people do
    (wrong types, unknown keys, zero or negative durations, empty or duplicate
    names, huge numbers, unicode, ${UNSET_VAR}); many documents go through
    parse_settings, a few through the real CLI;
(b) API bodies: hypothesis-generated answers from the fake OpenRouter, each
    through a whole in-process tick;
(c) the command line: unknown commands, bad options, unreadable settings files
    and databases that cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Result, RunCli
from fakes import FakeOpenRouter, Resp, write_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from worker import commands
from worker.apihttp import MAX_BODY
from worker.app import App
from worker.settings import SettingsError, parse_settings
from worker.tick import Deps, run_tick

KEY = "sk-or-v1-fuzz-inputs-0005"
UNSET = "CW_FUZZ_UNSET_VAR"  # never set in any environment these tests build
FUNCTION_SCOPED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


# =========================================================================== (a) settings
#
# A valid document, then one to four mutations, each known to be invalid and to
# name one path. Settings are checked in layers and a layer stops the next:
# ${VAR} expansion, then validation, then cross-checks (duplicates, references).
# A rule with an unknown type reports only that. So the paths a document must
# report are those of its mutations in the first layer that has any.

EXPAND, VALIDATE, CROSS = 0, 1, 2

DURATION_PATHS = [("openrouter", "timeout"), ("schedule", "interval"), ("database", "keep_raw"),
                  ("alerts", "repeat_interval"), ("forecast", "window"), ("rules", 1, "window"),
                  ("rules", 1, "short_window"), ("rules", 2, "window"), ("rules", 2, "below"),
                  ("rules", 0, "for")]
BAD_DURATIONS = {
    "wrong type": [5, 1.5, True, ["5m"], {"m": 5}],
    "zero or negative": ["0s", "0m", "0h0m0s", "-1s", "-5m", "0"],
    "malformed": ["", " ", "5 minutes", "1h 30m", "m5", "5M", "30m1h", "1.5h"],
    "unicode": ["\uff15m", "\u0663s", "5\uff4d", "1h\u200b", "五分"],
    "huge": ["101y", "999999999999999999999y", "1" + "0" * 40 + "s"],
}
AMOUNT_PATHS = [("rules", 0, "below"), ("rules", 1, "above")]
BAD_AMOUNTS = {
    "wrong type": ["ten", "", "10€", "\uff11\uff10", [], [1.0], {"usd": 1}, True, False],
    "negative": [-1, -0.5, -1e-9, "-3"],
    "huge": [1e13, 1e300, 10**30, math.inf, -math.inf, math.nan, "1e400"],
}
NAME_PATHS = [("channels", 0, "name"), ("channels", 1, "name"), *[("rules", i, "name") for i in range(4)]]
BAD_NAMES = {
    "empty": ["", " "],
    "wrong type": [5, 1.5, True, ["low"], {"n": "low"}],
    "shape": ["-lead", ".dot", "a b", "a/b", "x" * 65, "tab\there"],
    "unicode": ["naïve", "чат", "alert🔥", "\uff4c\uff4f\uff57"],
}
OTHER_FIELDS: dict[tuple[Any, ...], list[Any]] = {
    ("openrouter", "base_url"): ["ftp://x", "http://example.com/api/v1", "https://", "", 5,
                                 "https://user:pw@example.com", "openrouter.ai",
                                 "http://127.0.0.1:99999/api/v1", "https://openrouter.ai:x1/api/v1",
                                 "https://openrouter.ai/api/v1#top", "https://openrouter.ai/api/v1?a=1",
                                 "https://openrouter.ai/api\tv1", "https://openrouter.ai/api/v1\r\n"],
    ("openrouter", "api_key_env"): ["", "1ABC", "A-B", "КЛЮЧ", 5, ["K"]],
    ("openrouter", "timeout"): ["11m", "1h"],  # valid durations, over the 10m cap
    ("alerts", "send_resolved"): ["yes", "true", 1, 0, [], {"v": True}],
    ("channels", 0, "url"): ["", "no-scheme-here", 5, ["json://h"], {"u": "json://h"}],
    ("database", "url"): ["", "creditwatch.db", 5],
    ("rules", 3, "consecutive"): [0, -1, 2.5, "3", True, 10**30, 10_001],
    ("rules", 0, "severity"): ["fatal", "", "WARNING", 2, ["warning"]],
    ("rules", 2, "severity"): ["crit", "Critical", "\uff57arning"],
    ("rules", 0, "channels"): [[], "chat", 5, [5]],
}
RULE_TYPES_BAD = ["thresold", "", "THRESHOLD", "burn-rate", 5, True, ["threshold"]]
SECTION_KEYS = {
    "": {"openrouter", "schedule", "database", "alerts", "forecast", "channels", "rules"},
    "openrouter": {"base_url", "api_key_env", "timeout"},
    "schedule": {"interval"},
    "database": {"url", "keep_raw", "keep_rollups"},
    "alerts": {"repeat_interval", "send_resolved"},
    "forecast": {"window"},
    "channels": {"name", "url"},
    "rules": {"name", "type", "severity", "channels", "for", "below", "below_percent",
              "clear_above", "window", "short_window", "above", "consecutive"},
}
STRING_PATHS = [("openrouter", "base_url"), ("openrouter", "api_key_env"), ("database", "url"),
                ("channels", 0, "url"), ("channels", 1, "name"), ("rules", 2, "name"),
                *DURATION_PATHS]


def base_document(api_base_url: str, db_path: str) -> dict[str, Any]:
    return {
        "openrouter": {"base_url": api_base_url, "timeout": "1s"},
        "schedule": {"interval": "5m"},
        "database": {"url": f"sqlite:///{db_path}"},
        "alerts": {"repeat_interval": "6h", "send_resolved": True},
        "forecast": {"window": "6h"},
        "channels": [{"name": "chat", "url": "json://127.0.0.1:9/hook"},
                     {"name": "pager", "url": "json://127.0.0.1:9/pager"}],
        "rules": [
            {"name": "low", "type": "threshold", "below": 10.0},
            {"name": "fast", "type": "burn_rate", "window": "1h", "short_window": "5m",
             "above": 5.0},
            {"name": "runway", "type": "runway", "window": "6h", "below": "24h"},
            {"name": "fetch", "type": "fetch_failure", "consecutive": 3,
             "severity": "critical", "channels": ["chat"]},
        ],
    }


@dataclass(frozen=True)
class Mutation:
    path: tuple[Any, ...]  # where the value goes
    value: Any
    layer: int
    names: str  # the problem line's path
    kind: str  # for hypothesis' statistics and failure reports


def dotted(path: tuple[Any, ...]) -> str:
    """The path as problem lines spell it: a key that is not plain letters, digits, '-'
    or '_' shows quoted in brackets, so a newline or a dot in it cannot mislead."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f"[{json.dumps(part)}]"
        else:
            out += f".{part}" if out else part
    return out


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    return Mutation(path, value, VALIDATE, dotted(path), "")


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    kind = draw(st.sampled_from(["duration", "amount", "name", "other", "type", "unknown key",
                                 "unset var", "duplicate", "undefined channel"]))
    if kind == "duration":
        group = draw(st.sampled_from(sorted(BAD_DURATIONS)))
        m = _set(draw(st.sampled_from(DURATION_PATHS)), draw(st.sampled_from(BAD_DURATIONS[group])))
        kind += f" ({group})"
    elif kind == "amount":
        group = draw(st.sampled_from(sorted(BAD_AMOUNTS)))
        m = _set(draw(st.sampled_from(AMOUNT_PATHS)), draw(st.sampled_from(BAD_AMOUNTS[group])))
        kind += f" ({group})"
    elif kind == "name":
        group = draw(st.sampled_from(sorted(BAD_NAMES)))
        m = _set(draw(st.sampled_from(NAME_PATHS)), draw(st.sampled_from(BAD_NAMES[group])))
        kind += f" ({group})"
    elif kind == "other":
        path = draw(st.sampled_from(sorted(OTHER_FIELDS, key=str)))
        m = _set(path, draw(st.sampled_from(OTHER_FIELDS[path])))
    elif kind == "type":
        i = draw(st.integers(0, 3))
        m = Mutation(("rules", i, "type"), draw(st.sampled_from(RULE_TYPES_BAD)), VALIDATE,
                     f"rules[{i}].type", kind)
    elif kind == "unknown key":
        m = draw(unknown_keys())
    elif kind == "unset var":
        path = draw(st.sampled_from(STRING_PATHS))
        ref = draw(st.sampled_from([f"${{{UNSET}}}", f"x${{{UNSET}}}y", "${}", "${1BAD}",
                                    f"${{{UNSET}_2}}", "${A-B}"]))
        m = Mutation(path, ref, EXPAND, dotted(path), kind)
    elif kind == "duplicate":
        section, count = draw(st.sampled_from([("rules", 4), ("channels", 2)]))
        j = draw(st.integers(1, count - 1))
        k = draw(st.integers(0, j - 1))
        m = Mutation((section, j, "name"), ("copy of", section, k), CROSS, f"{section}[{j}].name",
                     kind)
    else:
        i = draw(st.integers(0, 3))
        m = Mutation(("rules", i, "channels"), ["chat", "nowhere"], CROSS, f"rules[{i}].channels[1]",
                     kind)
    return Mutation(m.path, m.value, m.layer, m.names, m.kind or kind)


# Keys a person might mistype, plus arbitrary unicode. Control characters are left
# out here: a key with a newline is test_a_key_with_a_newline_stays_on_one_line.
KEY_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)


@st.composite
def unknown_keys(draw: st.DrawFn) -> Mutation:
    where = draw(st.sampled_from(["", "openrouter", "schedule", "database", "alerts", "forecast",
                                  "channels", "rules"]))
    key = draw(st.sampled_from(["intervall", "timeout_s", "for_", "Below", "url ", "typ"]) | KEY_TEXT)
    if key in SECTION_KEYS[where]:
        key += "_x"
    value = draw(st.sampled_from([1, "5m", True, 2.5, ["a"]]))
    if where in ("channels", "rules"):
        i = draw(st.integers(0, 1 if where == "channels" else 3))
        path = (where, i, key)
        return Mutation(path, value, VALIDATE, dotted(path), "unknown key")
    path = (where, key) if where else (key,)
    return Mutation(path, value, VALIDATE, dotted(path), "unknown key")


def apply(doc: dict[str, Any], muts: list[Mutation]) -> set[str]:
    """Apply the mutations (duplicates last); return the paths that must be reported."""
    ordered = sorted(muts, key=lambda m: m.layer == CROSS)
    final: dict[tuple[Any, ...], Mutation] = {}
    for m in ordered:
        value = m.value
        if isinstance(value, tuple) and value[0] == "copy of":
            value = doc[value[1]][value[2]]["name"]
        node = doc
        for part in m.path[:-1]:
            node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
        node[m.path[-1]] = value
        final[m.path] = m
    live = list(final.values())
    broken_rules = {m.path[1] for m in live if m.path[0] == "rules" and m.path[2] == "type"}
    live = [m for m in live
            if not (m.layer == VALIDATE and m.path[0] == "rules" and m.path[1] in broken_rules
                    and m.path[2] != "type")]
    first = min(m.layer for m in live)
    return {m.names for m in live if m.layer == first}


def toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def to_toml(doc: dict[str, Any]) -> str:
    lines = [f"{toml_string(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and k in ("channels", "rules"))]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines += ["", f"[{toml_string(name)}]"]
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in table.items()]
    for name in ("channels", "rules"):
        for item in doc.get(name, []):
            lines += ["", f"[[{name}]]"]
            lines += [f"{toml_string(k)} = {toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


@st.composite
def broken_settings(draw: st.DrawFn) -> tuple[Callable[[str, str], tuple[str, set[str]]], list[Mutation]]:
    drawn = draw(st.lists(mutations(), min_size=1, max_size=4))
    # One duplicate at most: a second could rename the first one's source.
    dups = [m for m in drawn if m.kind == "duplicate"]
    muts = [m for m in drawn if m.kind != "duplicate"] + dups[:1]

    def render(api_base_url: str, db_path: str) -> tuple[str, set[str]]:
        doc = base_document(api_base_url, db_path)
        expected = apply(doc, muts)
        return to_toml(doc), expected

    return render, muts


def problem_path(line: str) -> str:
    path, sep, message = line.partition(": ")
    assert sep and path and message.strip(), f"not a `path: message` line: {line!r}"
    return path


def assert_names_every_expected_path(lines: list[str], expected: set[str], context: Any) -> None:
    assert lines, context
    for line in lines:
        problem_path(line)
    for path in expected:  # the line names the setting, or an item inside it
        assert any(problem_path(line) == path or line.startswith((f"{path}[", f"{path}."))
                   for line in lines), (path, lines, context)


def test_the_base_document_is_valid() -> None:
    text_ = to_toml(base_document("https://openrouter.ai/api/v1", "/tmp/x.db"))
    parsed = parse_settings(text_, {})
    assert [r.name for r in parsed.rules] == ["low", "fast", "runway", "fetch"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broken_settings())
def test_fuzzed_settings_through_parse_settings(case: tuple[Any, list[Mutation]]) -> None:
    render, muts = case
    document, expected = render("https://openrouter.ai/api/v1", "/tmp/never-created.db")
    try:
        parse_settings(document, {"OPENROUTER_API_KEY": KEY})
    except SettingsError as err:
        lines = err.problems
    else:
        raise AssertionError(f"accepted an invalid document: {muts}\n{document}")
    assert all("\n" not in line for line in lines), lines
    assert_names_every_expected_path(lines, expected, (muts, document))


CLI_EXAMPLES = 13  # per command: 26 runs of the real program in all


# One test per command, so that pytest-xdist can run the two halves side by side.
@pytest.mark.parametrize("command", [("config", "check"), ("check",)], ids=["config-check", "check"])
@settings(max_examples=CLI_EXAMPLES, deadline=None, suppress_health_check=FUNCTION_SCOPED)
@given(case=broken_settings())
def test_fuzzed_settings_through_the_cli(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, command: tuple[str, ...],
        case: tuple[Any, list[Mutation]]) -> None:
    render, muts = case
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    document, expected = render(fake_api.base_url, str(folder / "cw.db"))
    config = folder / "settings.toml"
    config.write_text(document, encoding="utf-8")

    result = run_cli(*command, config=config, cwd=folder,
                     env={"OPENROUTER_API_KEY": KEY, UNSET: None})

    context = (command, muts, document, result)
    assert result.code == 78, context
    assert "Traceback" not in result.stderr + result.stdout, context
    assert result.stdout == "", context
    assert_names_every_expected_path(result.stderr.splitlines(), expected, context)
    assert sorted(p.name for p in folder.iterdir()) == ["settings.toml"], "database written"
    assert fake_api.count == 0


DEEP_DOCUMENTS = {
    "arrays": "a = " + "[" * 600 + "]" * 600 + "\n",
    "inline-tables": "a = " + "{b = " * 600 + "1" + "}" * 600 + "\n",
    "in-a-rule": "[[rules]]\nname = 'r'\ntype = 'threshold'\nbelow = " + "[" * 600 + "]" * 600 + "\n",
    "dotted-keys": "a" + ".b" * 200 + " = 1\n",
}


@pytest.mark.parametrize("doc", list(DEEP_DOCUMENTS))
@pytest.mark.parametrize("command", [["check"], ["config", "check"]], ids=["check", "config-check"])
def test_deeply_nested_settings_are_one_line_exit_78(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, doc: str, command: list[str]) -> None:
    config = write_settings(tmp_path, DEEP_DOCUMENTS[doc])
    result = run_cli(*command, config=config, env={"OPENROUTER_API_KEY": KEY})
    line = one_line_failure(result, 78)
    assert line.startswith("settings: ") and "nested" in line, line
    assert fake_api.count == 0 and not list(tmp_path.glob("*.db*"))


def test_a_key_with_a_newline_stays_on_one_line() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings('[schedule]\n"inter\\nval" = "5m"\n', {})
    assert all("\n" not in line for line in caught.value.problems), caught.value.problems


# =========================================================================== (b) API bodies



@dataclass
class TickBed:
    loaded: App
    deps: Deps
    api: FakeOpenRouter
    now: datetime = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    fuzzed: int = 0

    def readings(self) -> list[tuple[float, float]]:
        with self.loaded.engine.connect() as conn:
            rows = conn.execute(text("SELECT total_credits, total_usage FROM readings ORDER BY id"))
            return [(float(c), float(u)) for c, u in rows]

    def tick(self, body: bytes, content_type: str | None) -> tuple[bool, tuple[float, float] | None]:
        """One whole tick on this answer: (stored a reading?, what it stored)."""
        self.fuzzed += 1
        self.now += timedelta(minutes=1)
        self.api.set_default(Resp(body=body, content_type=content_type))
        before = len(self.readings())
        report = run_tick(self.deps, self.now)  # must not raise, whatever the body
        after = self.readings()
        stored = len(after) > before
        assert len(after) - before in (0, 1)
        assert stored == report.outcome.ok, report.outcome
        if not stored:
            assert report.outcome.message, report.outcome
        return stored, after[-1] if stored else None


@pytest.fixture
def bed(tmp_path: Path, fake_api: FakeOpenRouter, restore_logging: None,
        record_property: Callable[[str, object], None]) -> Iterator[TickBed]:
    config = write_settings(tmp_path, textwrap.dedent(f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "2s"
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        [[rules]]
        name = "low"
        type = "threshold"
        below = 10.0
        """))
    args = argparse.Namespace(config=str(config), log_level="ERROR")
    env = {"OPENROUTER_API_KEY": KEY}
    loaded = commands.load(args, env, need_key=True)
    loaded.migrate()
    made = TickBed(loaded, loaded.deps, fake_api)
    yield made
    record_property("fuzzed_api_bodies", made.fuzzed)
    made.deps.http.close()
    loaded.engine.dispose()


def oracle(body: bytes) -> tuple[float, float] | None:
    """The contract: JSON whose data.total_credits/total_usage are finite, in [0, 1e12], not booleans."""
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        document = json.loads(body, parse_constant=refuse)
    except (ValueError, RecursionError):
        return None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return None
    values = []
    for name in ("total_credits", "total_usage"):
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        try:
            number = float(value)
        except OverflowError:
            return None
        if not math.isfinite(number) or not 0 <= number <= 1e12:  # CONTRACT: above 1e12 is bad
            return None
        values.append(number)
    return values[0], values[1]


JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/problem+json"]
OTHER_TYPES = [None, "text/html; charset=utf-8", "text/plain", "application/octet-stream",
               "application/x-www-form-urlencoded", ""]

NUMBER_TOKENS = ["0", "1", "12.5", "100", "1e3", "1E2", "-0", "-0.0", "0.000001", "1e308",
                 "123456789012345678901234567890"]
BAD_TOKENS = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309", "1e99999", "-1", "-0.01",
              "-1e-300", "true", "false", "null", '"12"', '"NaN"', "[]", "[1]", "{}",
              '{"value": 1}', "01", "0x10", "1_000", ".5", "5.", "+1", "--1", "1" * 5000,
              '"\\u0000"', "nan", "inf"]
scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats()
           | st.text(max_size=10))
json_junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=10)
amounts = st.floats(min_value=0, allow_infinity=False) | st.integers(0, 10**12) | json_junk


@st.composite
def json_documents(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["data", "data", "missing", "nested", "junk"]))
    if shape == "junk":
        document: Any = draw(json_junk)
    elif shape == "nested":
        document = {"data": {"data": {"total_credits": 1, "total_usage": 0}}}
    else:
        fields = {"total_credits": draw(amounts), "total_usage": draw(amounts)}
        if shape == "missing":
            fields.pop(draw(st.sampled_from(sorted(fields))))
        extra = draw(st.dictionaries(st.text(max_size=6), json_junk, max_size=3))
        document = {"data": {**extra, **fields}} | draw(st.dictionaries(st.text(max_size=4),
                                                                        json_junk, max_size=2))
    return json.dumps(document).encode()  # NaN/Infinity written as Python writes them


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    credits = draw(st.sampled_from(NUMBER_TOKENS + BAD_TOKENS))
    usage = draw(st.sampled_from(NUMBER_TOKENS + BAD_TOKENS))
    template = draw(st.sampled_from([
        '{"data": {"total_credits": %s, "total_usage": %s}}',
        '{"data":{"total_usage":%2$s,"total_credits":%1$s}}',
        '{"data": {"total_credits": %s, "total_usage": %s, "total_credits": -5}}',
        '{"data": {"total_credits": %s, "total_usage": %s}',  # truncated
        '\ufeff{"data": {"total_credits": %s, "total_usage": %s}}',
        '[{"data": {"total_credits": %s, "total_usage": %s}}]',
        '{"data": {"total_credits": %s, "total_usage": %s}} trailing',
        '  {"data" : {"total_credits" : %s , "total_usage" : %s}}\n\n',
    ]))
    if "%1$s" in template:
        body = template.replace("%2$s", usage).replace("%1$s", credits)
    else:
        body = template % (credits, usage)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "latin-1"]))
    return body.encode(encoding, errors="replace")


@st.composite
def odd_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["huge valid", "huge junk", "deep", "bytes", "empty", "at cap"]))
    if kind == "huge valid":
        pad = "x" * draw(st.integers(MAX_BODY, 3 * MAX_BODY))
        return json.dumps({"data": {"total_credits": 10.0, "total_usage": 1.0, "pad": pad}}).encode()
    if kind == "huge junk":
        return draw(st.sampled_from([b"[", b"{", b"9", b" "])) * draw(st.integers(MAX_BODY, 2 * MAX_BODY))
    if kind == "deep":
        depth = draw(st.integers(500, 20_000))
        return b"[" * depth + b"]" * depth
    if kind == "at cap":
        core = b'{"data": {"total_credits": 10.0, "total_usage": 1.0}}'
        return core + b" " * (MAX_BODY - len(core))
    if kind == "empty":
        return b""
    return draw(st.binary(max_size=300))


def check_one(bed: TickBed, body: bytes, content_type: str | None) -> None:
    stored, values = bed.tick(body, content_type)
    truth = oracle(body)
    if stored:
        assert truth is not None, ("stored a reading from an invalid body", body[:300], content_type)
        assert values == truth
    elif content_type in JSON_TYPES and len(body) <= MAX_BODY:
        assert truth is None, ("refused a valid body", body[:300], content_type)


BODY_FUZZ = settings(deadline=None, suppress_health_check=FUNCTION_SCOPED)


@settings(BODY_FUZZ, max_examples=150)
@given(body=json_documents(), content_type=st.sampled_from(JSON_TYPES + OTHER_TYPES[:2]))
def test_fuzzed_json_documents_through_a_tick(bed: TickBed, body: bytes,
                                              content_type: str | None) -> None:
    check_one(bed, body, content_type)


@settings(BODY_FUZZ, max_examples=150)
@given(body=raw_bodies(), content_type=st.sampled_from(JSON_TYPES + OTHER_TYPES))
def test_fuzzed_raw_bodies_through_a_tick(bed: TickBed, body: bytes,
                                          content_type: str | None) -> None:
    check_one(bed, body, content_type)


@settings(BODY_FUZZ, max_examples=40)
@given(body=odd_bodies(), content_type=st.sampled_from(JSON_TYPES + OTHER_TYPES))
def test_fuzzed_huge_deep_and_binary_bodies_through_a_tick(bed: TickBed, body: bytes,
                                                           content_type: str | None) -> None:
    check_one(bed, body, content_type)


def test_the_body_oracle_agrees_on_known_cases(bed: TickBed) -> None:
    """Anchors for the fuzz: a few bodies whose fate is written out by hand."""
    cases = [
        (b'{"data": {"total_credits": 100, "total_usage": 20.5}}', (100.0, 20.5)),
        (b'{"data": {"total_credits": NaN, "total_usage": 1}}', None),
        (b'{"data": {"total_credits": 1e309, "total_usage": 1}}', None),
        (b'{"data": {"total_credits": 10, "total_usage": -1}}', None),
        (b'{"data": {"total_credits": true, "total_usage": 1}}', None),
        (b'{"data": {"total_credits": "10", "total_usage": 1}}', None),
        (b'{"data": {"total_credits": 10}}', None),
    ]
    for body, truth in cases:
        assert oracle(body) == truth
        stored, values = bed.tick(body, "application/json")
        assert (values if stored else None) == truth, body


# =========================================================================== (c) command line


def one_line_failure(result: Result, code: int) -> str:
    assert result.code == code, result
    assert "Traceback" not in result.stderr + result.stdout, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    assert result.stdout == "", result
    return lines[0]


@pytest.fixture
def good_settings(tmp_path: Path, fake_api: FakeOpenRouter) -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "1s"
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        """)


@pytest.mark.parametrize("args", [
    ["Check"], ["db", "downgrade"], ["config", "show"], ["db"], ["config"], ["status", "--jsn"],
    ["--log-level", "TRACE", "status"], ["check", "extra"],
    ["history", "--since", ""], ["history", "--since", "x"], ["history", "--since", "-1h"],
    ["history", "--since=-1h"], ["history", "--since", "0s"], ["history", "--since", "5 m"],
    ["history", "--format", ""], ["history", "--format", "JSON"], ["history", "--format", "yaml"],
])
def test_command_line_mistakes_are_one_line_exit_64(
        good_settings: Path, fake_api: FakeOpenRouter, run_cli: RunCli, args: list[str]) -> None:
    result = run_cli(*args, config=good_settings, env={"OPENROUTER_API_KEY": KEY})
    one_line_failure(result, 64)
    assert fake_api.count == 0


def _directory(tmp_path: Path) -> Path:
    folder = tmp_path / "a-directory.toml"
    folder.mkdir()
    return folder


def _unreadable(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file anyway; the directory case covers unreadable")
    path = write_settings(tmp_path, "[schedule]\ninterval = '5m'\n", name="secret.toml")
    path.chmod(0)
    return path


def _not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[[channels]]\nname = "caf\u00e9"\nurl = "json://h"\n'.encode("latin-1")
                     + b"\xff\xfe\x00")
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no" / "such" / "settings.toml"


@pytest.mark.parametrize("make", [_directory, _unreadable, _not_utf8, _missing],
                         ids=["directory", "chmod-000", "not-utf8", "missing"])
@pytest.mark.parametrize("command", [["check"], ["config", "check"]])
def test_unreadable_settings_are_one_line_exit_78(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli,
        make: Callable[[Path], Path], command: list[str]) -> None:
    path = make(tmp_path)
    result = run_cli(*command, config=path, env={"OPENROUTER_API_KEY": KEY})
    line = one_line_failure(result, 78)
    assert line.startswith("settings: "), line
    assert fake_api.count == 0
    assert not any(p.name.startswith("creditwatch.db") for p in tmp_path.iterdir())


BAD_DATABASES = ["sqlite:////nonexistent/dir/x.db", "postgresql+psycopg://postgres@127.0.0.1:1/x"]


@pytest.mark.parametrize("url", BAD_DATABASES, ids=["sqlite-no-dir", "postgresql-port-1"])
@pytest.mark.parametrize(("command", "code"), [(["check"], 3), (["run"], 1), (["status"], 1)])
def test_a_database_that_cannot_be_opened_is_one_line(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, url: str,
        command: list[str], code: int) -> None:
    config = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "1s"
        [database]
        url = "{url}"
        """)
    result = run_cli(*command, config=config, env={"OPENROUTER_API_KEY": KEY}, timeout=30)
    line = one_line_failure(result, code)
    assert line.startswith("creditwatch: ") and "database" in line, line
    assert re.search(r"sqlite:|postgresql|/nonexistent/dir/x\.db", line), line
    assert fake_api.count == 0, "the API was asked before the database was usable"
