"""Settings: strict parsing, ${VAR} expansion, cross-checks, one `path: message` per problem."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.domain import Severity
from worker.settings import (
    DEFAULT_FETCH_RULE,
    BurnRateRule,
    FetchFailureRule,
    RunwayRule,
    Settings,
    SettingsError,
    ThresholdRule,
    parse_settings,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The example from CONTRACT.md, verbatim.
CONTRACT_EXAMPLE = textwrap.dedent(
    """\
    [openrouter]
    base_url = "https://openrouter.ai/api/v1"   # the credits endpoint is {base_url}/credits
    api_key_env = "OPENROUTER_API_KEY"           # env var holding the management key
    timeout = "10s"

    [schedule]
    interval = "5m"                              # at least "1s"

    [database]
    url = "sqlite:///creditwatch.db"             # any SQLAlchemy URL; PostgreSQL for several replicas

    [alerts]
    repeat_interval = "6h"                       # remind about a still-firing alert this often
    send_resolved = true                         # say so once when an alert stops firing

    [forecast]
    window = "6h"                                # the window `status` uses for burn rate and runway

    [[channels]]
    name = "chat"
    url = "${SLACK_WEBHOOK_URL}"                 # any apprise URL

    [[channels]]
    name = "email"
    url = "mailtos://user:${SMTP_PASSWORD}@example.com?to=ops@example.com"

    [[rules]]
    name = "low-balance"
    type = "threshold"
    below = 10.0                                 # USD remaining; or below_percent = 10 (of total_credits)
    clear_above = 15.0                           # optional hysteresis: once firing, resolve only above this
    severity = "warning"                         # info | warning | critical (default warning)
    channels = ["chat"]                          # omitted: every channel
    for = "10m"                                  # optional, any rule: must hold this long before firing

    [[rules]]
    name = "fast-burn"
    type = "burn_rate"
    window = "1h"
    short_window = "5m"                          # optional: fire only while both windows exceed `above`
    above = 5.0                                  # USD spent per hour over the window

    [[rules]]
    name = "short-runway"
    type = "runway"
    window = "6h"
    below = "24h"                                # forecast time until the balance reaches zero

    [[rules]]
    name = "fetch-failing"
    type = "fetch_failure"
    consecutive = 3                              # failed fetches in a row
    severity = "critical"
    """
)
SLACK = "https://hooks.slack.com/services/T000/B000/XXXXSECRET"
ENV = {"SLACK_WEBHOOK_URL": SLACK, "SMTP_PASSWORD": "smtp-pw-123"}
CHANNEL = '[[channels]]\nname = "chat"\nurl = "json://127.0.0.1/hook"\n'


def parse(text: str, environ: dict[str, str] | None = None) -> Settings:
    return parse_settings(textwrap.dedent(text), ENV if environ is None else environ)


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse(text, environ)
    lines = caught.value.problems
    assert lines, "a SettingsError must carry at least one problem"
    for line in lines:
        assert_one_problem_line(line)
    assert str(caught.value) == "\n".join(lines)
    return lines


def assert_one_problem_line(line: str) -> None:
    assert isinstance(line, str)
    assert "\n" not in line and "\r" not in line, line
    path, sep, message = line.partition(": ")
    assert sep and path and message.strip(), line
    assert "Traceback" not in line


def rule(body: str) -> str:
    return "[[rules]]\n" + textwrap.dedent(body) + "\n"


# --------------------------------------------------------------------------- the example


def test_contract_example_parses() -> None:
    s = parse(CONTRACT_EXAMPLE)
    assert s.openrouter.base_url == "https://openrouter.ai/api/v1"
    assert s.openrouter.api_key_env == "OPENROUTER_API_KEY"
    assert s.openrouter.timeout == timedelta(seconds=10)
    assert s.schedule.interval == timedelta(minutes=5)
    assert s.database.url.get_secret_value() == "sqlite:///creditwatch.db"
    assert s.alerts.repeat_interval == timedelta(hours=6)
    assert s.alerts.send_resolved is True
    assert s.forecast.window == timedelta(hours=6)
    assert [c.name for c in s.channels] == ["chat", "email"]
    assert s.channels[0].url.get_secret_value() == SLACK
    assert s.channels[1].url.get_secret_value() == (
        "mailtos://user:smtp-pw-123@example.com?to=ops@example.com"
    )
    assert [r.name for r in s.rules] == ["low-balance", "fast-burn", "short-runway", "fetch-failing"]
    low, fast, runway, fetch = s.rules
    assert isinstance(low, ThresholdRule)
    assert (low.below, low.below_percent, low.clear_above) == (10.0, None, 15.0)
    assert low.severity is Severity.WARNING
    assert low.channels == ("chat",)
    assert low.pending_for == timedelta(minutes=10)
    assert isinstance(fast, BurnRateRule)
    assert (fast.window, fast.short_window, fast.above) == (
        timedelta(hours=1), timedelta(minutes=5), 5.0,
    )
    assert isinstance(runway, RunwayRule)
    assert (runway.window, runway.below) == (timedelta(hours=6), timedelta(hours=24))
    assert isinstance(fetch, FetchFailureRule)
    assert (fetch.consecutive, fetch.severity) == (3, Severity.CRITICAL)
    # A rule without severity is a warning; without channels it notifies every channel.
    assert fast.severity is Severity.WARNING and runway.severity is Severity.WARNING
    assert s.channels_for(fast) == ("chat", "email")
    assert s.channels_for(low) == ("chat",)
    assert fast.pending_for == timedelta(0)


def test_secrets_are_hidden_in_repr_and_str() -> None:
    s = parse(CONTRACT_EXAMPLE)
    for text in (repr(s), str(s), repr(s.channels), str(s.model_dump())):
        assert "XXXXSECRET" not in text
        assert "smtp-pw-123" not in text


def test_empty_file_gives_all_defaults_and_the_default_fetch_rule() -> None:
    s = parse("")
    assert s.openrouter.base_url == "https://openrouter.ai/api/v1"
    assert s.openrouter.api_key_env == "OPENROUTER_API_KEY"
    assert s.schedule.interval == timedelta(minutes=5)
    assert s.alerts.send_resolved is True
    assert s.forecast.window == timedelta(hours=6)
    assert s.channels == ()
    assert [r.name for r in s.rules] == [DEFAULT_FETCH_RULE]


def test_parse_settings_reads_only_the_given_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONLY_IN_PROCESS_ENV", "x")
    assert problems('[openrouter]\napi_key_env = "${ONLY_IN_PROCESS_ENV}"', {}) == [
        "openrouter.api_key_env: environment variable ONLY_IN_PROCESS_ENV is not set"
    ]


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("typo = 1", "typo"),
        ("[nope]\n", "nope"),
        ("[openrouter]\nbase_uri = 'https://x.example'", "openrouter.base_uri"),
        ("[schedule]\nevery = '5m'", "schedule.every"),
        ("[database]\nuser = 'x'", "database.user"),
        ("[alerts]\nrepeat = '1h'", "alerts.repeat"),
        ("[forecast]\nwindows = '1h'", "forecast.windows"),
        ("[[channels]]\nname = 'a'\nurl = 'json://h'\ntoken = 'x'", "channels[0].token"),
        (rule("name='r'\ntype='threshold'\nbelow=1\nabove=2"), "rules[0].above"),
        (rule("name='r'\ntype='burn_rate'\nwindow='1h'\nabove=2\nbelow=1"), "rules[0].below"),
        (rule("name='r'\ntype='runway'\nwindow='1h'\nbelow='1h'\nabove=1"), "rules[0].above"),
        (rule("name='r'\ntype='fetch_failure'\nwindow='1h'"), "rules[0].window"),
        (rule("name='r'\ntype='threshold'\nbelow=1\nfor_='5m'"), "rules[0].for_"),
        (rule("name='r'\ntype='threshold'\nbelow=1\npending_for='5m'"), "rules[0].pending_for"),
        (rule("name='a'\ntype='threshold'\nbelow=1") + rule("name='b'\ntype='runway'\n"
         "window='1h'\nbelow='1h'\nextra={x=1}"), "rules[1].extra"),
    ],
)
def test_unknown_keys_are_errors_naming_the_path(text: str, path: str) -> None:
    assert f"{path}: unknown setting" in problems(text)


def test_every_unknown_key_is_reported_at_once() -> None:
    lines = problems("a = 1\n[openrouter]\nb = 2\n[alerts]\nc = 3\n")
    paths = {line.split(": ")[0] for line in lines}
    assert {"a", "openrouter.b", "alerts.c"} <= paths


# --------------------------------------------------------------------------- rule types


def test_unknown_rule_type_names_the_path_and_the_type() -> None:
    lines = problems(rule("name = 'low'\ntype = 'thresold'\nbelow = 10"))
    assert len(lines) == 1
    assert lines[0].startswith("rules[0].type: unknown rule type 'thresold'")
    for known in ("threshold", "burn_rate", "runway", "fetch_failure"):
        assert known in lines[0]


def test_unknown_rule_type_in_a_later_rule_names_its_index() -> None:
    text = rule("name='a'\ntype='threshold'\nbelow=1") + rule("name='b'\ntype='burnrate'\nabove=1")
    assert any(p.startswith("rules[1].type: unknown rule type 'burnrate'") for p in problems(text))


def test_missing_rule_type_is_named() -> None:
    lines = problems(rule("name = 'low'\nbelow = 10"))
    assert [p.split(": ")[0] for p in lines] == ["rules[0].type"]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (rule("type='threshold'\nbelow=1"), "rules[0].name"),
        (rule("name='r'\ntype='burn_rate'\nabove=1"), "rules[0].window"),
        (rule("name='r'\ntype='burn_rate'\nwindow='1h'"), "rules[0].above"),
        (rule("name='r'\ntype='runway'\nwindow='1h'"), "rules[0].below"),
        (rule("name='r'\ntype='runway'\nbelow='1h'"), "rules[0].window"),
        ("[[channels]]\nname='a'", "channels[0].url"),
        ("[[channels]]\nurl='json://h'", "channels[0].name"),
    ],
)
def test_missing_required_settings_name_the_path(text: str, path: str) -> None:
    assert any(p.startswith(f"{path}: ") for p in problems(text))


# --------------------------------------------------------------------------- ${VAR}


def test_var_expansion_everywhere_in_a_string() -> None:
    s = parse(
        """\
        [openrouter]
        base_url = "https://${HOST}/api/${VER}"
        api_key_env = "${KEYVAR}"
        [[channels]]
        name = "${NAME}"
        url = "json://${HOST}/x"
        """,
        {"HOST": "example.com", "VER": "v1", "KEYVAR": "MY_KEY", "NAME": "hook"},
    )
    assert s.openrouter.base_url == "https://example.com/api/v1"
    assert s.openrouter.api_key_env == "MY_KEY"
    assert s.channels[0].name == "hook"
    assert s.channels[0].url.get_secret_value() == "json://example.com/x"


def test_expanded_values_are_validated_like_literals() -> None:
    s = parse(rule("name='r'\ntype='threshold'\nbelow='${LIMIT}'"), {"LIMIT": "12.5"})
    assert isinstance(s.rules[0], ThresholdRule) and s.rules[0].below == 12.5
    s = parse("[schedule]\ninterval = '${EVERY}'", {"EVERY": "1h30m"})
    assert s.schedule.interval == timedelta(hours=1, minutes=30)


def test_unset_variable_names_the_variable_and_the_path() -> None:
    lines = problems(CHANNEL + "[[channels]]\nname='b'\nurl='json://h/${NOT_SET_ANYWHERE}'", {})
    assert lines == ["channels[1].url: environment variable NOT_SET_ANYWHERE is not set"]


def test_every_unset_variable_is_reported() -> None:
    lines = problems(
        "[openrouter]\nbase_url = 'https://${A}/${B}'\n[database]\nurl = '${C}'", {"B": "x"}
    )
    assert lines == [
        "openrouter.base_url: environment variable A is not set",
        "database.url: environment variable C is not set",
    ]


def test_unset_variable_inside_an_array_names_the_index() -> None:
    text = CHANNEL + rule("name='r'\ntype='threshold'\nbelow=1\nchannels=['chat', '${CH}']")
    assert problems(text, {}) == ["rules[0].channels[1]: environment variable CH is not set"]


def test_an_empty_variable_is_set() -> None:
    s = parse("[openrouter]\nbase_url = 'https://example.com${SUFFIX}'", {"SUFFIX": ""})
    assert s.openrouter.base_url == "https://example.com"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("json://h/$$", "json://h/$"),
        ("json://h/$${X}", "json://h/${X}"),
        ("json://h/$$$${X}", "json://h/$${X}"),
        ("json://h/a$b", "json://h/a$b"),  # a lone dollar stays
        ("json://h/$", "json://h/$"),
        ("json://h/$$${X}", "json://h/$val"),
    ],
)
def test_double_dollar_escapes(value: str, expected: str) -> None:
    s = parse(f"[[channels]]\nname='c'\nurl='{value}'", {"X": "val"})
    assert s.channels[0].url.get_secret_value() == expected


def test_expansion_is_not_recursive() -> None:
    s = parse("[[channels]]\nname='c'\nurl='json://h/${A}'", {"A": "${B}", "B": "no"})
    assert s.channels[0].url.get_secret_value() == "json://h/${B}"


@pytest.mark.parametrize("ref", ["${}", "${1X}", "${A-B}", "${A B}"])
def test_invalid_variable_references_are_errors(ref: str) -> None:
    lines = problems(f"[[channels]]\nname='c'\nurl='json://h/{ref}'", {})
    assert len(lines) == 1 and lines[0].startswith("channels[0].url: ")


def test_var_syntax_in_keys_and_non_strings_is_left_alone() -> None:
    # Only string values expand; numbers, booleans and keys never do.
    assert parse("[alerts]\nsend_resolved = false", {}).alerts.send_resolved is False


# --------------------------------------------------------------------------- cross-checks


def test_duplicate_rule_names() -> None:
    text = rule("name='low'\ntype='threshold'\nbelow=1") + rule(
        "name='low'\ntype='threshold'\nbelow=2"
    )
    lines = problems(text)
    assert len(lines) == 1
    assert lines[0].startswith("rules[1].name: ") and "low" in lines[0]


def test_duplicate_channel_names() -> None:
    lines = problems(CHANNEL + CHANNEL)
    assert len(lines) == 1
    assert lines[0].startswith("channels[1].name: ") and "chat" in lines[0]


def test_rule_naming_an_unknown_channel() -> None:
    lines = problems(CHANNEL + rule("name='r'\ntype='threshold'\nbelow=1\nchannels=['chat','pager']"))
    assert len(lines) == 1
    assert lines[0].startswith("rules[0].channels[1]: ") and "pager" in lines[0]


def test_rule_naming_a_channel_when_there_are_none() -> None:
    lines = problems(rule("name='r'\ntype='runway'\nwindow='1h'\nbelow='1h'\nchannels=['chat']"))
    assert lines[0].startswith("rules[0].channels[0]: ") and "chat" in lines[0]


@pytest.mark.parametrize(
    "limits", ["", "below = 1\nbelow_percent = 10"], ids=["neither", "both"]
)
def test_threshold_needs_exactly_one_of_below_and_below_percent(limits: str) -> None:
    lines = problems(rule(f"name='r'\ntype='threshold'\n{limits}"))
    assert len(lines) == 1
    assert lines[0].startswith("rules[0]")
    assert "below" in lines[0] and "below_percent" in lines[0]


def test_below_percent_alone_is_fine() -> None:
    r = parse(rule("name='r'\ntype='threshold'\nbelow_percent=10")).rules[0]
    assert isinstance(r, ThresholdRule) and (r.below, r.below_percent) == (None, 10.0)


@pytest.mark.parametrize("pct", [0, -1, 100.5, 1000])
def test_below_percent_out_of_range(pct: float) -> None:
    lines = problems(rule(f"name='r'\ntype='threshold'\nbelow_percent={pct}"))
    assert lines[0].startswith("rules[0].below_percent: ")


def test_clear_above_below_below_is_an_error() -> None:
    lines = problems(rule("name='r'\ntype='threshold'\nbelow=10\nclear_above=5"))
    assert len(lines) == 1
    assert lines[0].startswith("rules[0]") and "clear_above" in lines[0]


@pytest.mark.parametrize("clear", [10, 10.0, 15, 1e6])
def test_clear_above_at_or_above_below_is_fine(clear: float) -> None:
    r = parse(rule(f"name='r'\ntype='threshold'\nbelow=10\nclear_above={clear}")).rules[0]
    assert isinstance(r, ThresholdRule) and r.clear_above == clear


@pytest.mark.parametrize("short", ["1h", "2h", "1d"])
def test_short_window_must_be_shorter_than_window(short: str) -> None:
    text = rule(f"name='r'\ntype='burn_rate'\nwindow='1h'\nshort_window='{short}'\nabove=1")
    lines = problems(text)
    assert len(lines) == 1
    assert lines[0].startswith("rules[0]") and "short_window" in lines[0]


def test_shorter_short_window_is_fine() -> None:
    text = rule("name='r'\ntype='burn_rate'\nwindow='1h'\nshort_window='59m59s'\nabove=1")
    r = parse(text).rules[0]
    assert isinstance(r, BurnRateRule) and r.short_window == timedelta(minutes=59, seconds=59)


# --------------------------------------------------------------------------- default fetch rule


def test_default_fetch_rule_added_when_none_exists() -> None:
    s = parse(CHANNEL + "[[channels]]\nname='mail'\nurl='mailto://x'\n"
              + rule("name='low'\ntype='threshold'\nbelow=1"))
    assert [r.name for r in s.rules] == ["low", DEFAULT_FETCH_RULE]
    default = s.rules[-1]
    assert DEFAULT_FETCH_RULE == "fetch-failing"
    assert isinstance(default, FetchFailureRule)
    assert default.type == "fetch_failure"
    assert default.consecutive == 3
    assert default.severity is Severity.CRITICAL
    assert default.channels is None
    assert default.pending_for == timedelta(0)
    assert s.channels_for(default) == ("chat", "mail")


def test_no_default_when_a_fetch_failure_rule_exists() -> None:
    s = parse(rule("name='my-fetch'\ntype='fetch_failure'\nconsecutive=5\nseverity='warning'"))
    assert [r.name for r in s.rules] == ["my-fetch"]
    r = s.rules[0]
    assert isinstance(r, FetchFailureRule)
    assert (r.consecutive, r.severity) == (5, Severity.WARNING)


def test_fetch_failure_rule_defaults() -> None:
    r = parse(rule("name='f'\ntype='fetch_failure'")).rules[0]
    assert isinstance(r, FetchFailureRule)
    assert r.consecutive == 3
    assert r.severity is Severity.WARNING  # "A rule without severity is a warning"


def test_a_non_fetch_rule_named_like_the_default_is_reported() -> None:
    lines = problems(rule(f"name='{DEFAULT_FETCH_RULE}'\ntype='threshold'\nbelow=1"))
    assert len(lines) == 1 and DEFAULT_FETCH_RULE in lines[0]


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (rule("name='r'\ntype='threshold'\nbelow=true"), "rules[0].below"),
        (rule("name='r'\ntype='threshold'\nbelow_percent=true"), "rules[0].below_percent"),
        (rule("name='r'\ntype='threshold'\nbelow=1\nclear_above=false"), "rules[0].clear_above"),
        (rule("name='r'\ntype='burn_rate'\nwindow='1h'\nabove=true"), "rules[0].above"),
        (rule("name='r'\ntype='fetch_failure'\nconsecutive=true"), "rules[0].consecutive"),
    ],
)
def test_booleans_are_not_numbers(text: str, path: str) -> None:
    lines = problems(text)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: ")
    assert "boolean" in lines[0]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (rule("name='r'\ntype='threshold'\nbelow=-1"), "rules[0].below"),
        (rule("name='r'\ntype='threshold'\nbelow=nan"), "rules[0].below"),
        (rule("name='r'\ntype='threshold'\nbelow=inf"), "rules[0].below"),
        (rule("name='r'\ntype='threshold'\nbelow_percent=nan"), "rules[0].below_percent"),
        (rule("name='r'\ntype='threshold'\nbelow='ten'"), "rules[0].below"),
        (rule("name='r'\ntype='burn_rate'\nwindow='1h'\nabove=0"), "rules[0].above"),
        (rule("name='r'\ntype='burn_rate'\nwindow='1h'\nabove=-inf"), "rules[0].above"),
        (rule("name='r'\ntype='burn_rate'\nwindow='1h'\nabove=nan"), "rules[0].above"),
        (rule("name='r'\ntype='fetch_failure'\nconsecutive=0"), "rules[0].consecutive"),
        (rule("name='r'\ntype='fetch_failure'\nconsecutive=2.5"), "rules[0].consecutive"),
        (rule("name='r'\ntype='threshold'\nbelow=1\nseverity='fatal'"), "rules[0].severity"),
        (rule("name='r'\ntype='threshold'\nbelow=1\nchannels='chat'"), "rules[0].channels"),
        (rule("name='r'\ntype='threshold'\nbelow=1\nfor='0s'"), "rules[0].for"),
        (rule("name='r'\ntype='threshold'\nbelow=1\nfor=10"), "rules[0].for"),
        (rule("name='r'\ntype='runway'\nwindow='1h'\nbelow=24"), "rules[0].below"),
        (rule("name='r'\ntype='runway'\nwindow='1x'\nbelow='1h'"), "rules[0].window"),
        (rule("name='has space'\ntype='threshold'\nbelow=1"), "rules[0].name"),
        (rule("name=''\ntype='threshold'\nbelow=1"), "rules[0].name"),
        ("[schedule]\ninterval = '0s'", "schedule.interval"),
        ("[schedule]\ninterval = 300", "schedule.interval"),
        ("[schedule]\ninterval = 1979-05-27", "schedule.interval"),
        ("[alerts]\nrepeat_interval = '6 hours'", "alerts.repeat_interval"),
        ("[alerts]\nsend_resolved = 'perhaps'", "alerts.send_resolved"),
        ("[forecast]\nwindow = ''", "forecast.window"),
        ("[openrouter]\ntimeout = '1h'", "openrouter.timeout"),
        ("[openrouter]\napi_key_env = 'NOT A NAME'", "openrouter.api_key_env"),
        ("[openrouter]\nbase_url = 'ftp://example.com'", "openrouter.base_url"),
        ("[openrouter]\nbase_url = 'https://u:p@example.com'", "openrouter.base_url"),
        ("[openrouter]\nbase_url = 'example.com'", "openrouter.base_url"),
        ("[database]\nurl = 'creditwatch.db'", "database.url"),
        ("[[channels]]\nname='c'\nurl='not a url'", "channels[0].url"),
        ("[[channels]]\nname='c'\nurl=5", "channels[0].url"),
        ("[[channels]]\nname='-c'\nurl='json://h'", "channels[0].name"),
        ("rules = 5", "rules"),
        ("channels = {name='c'}", "channels"),
        ("openrouter = 'x'", "openrouter"),
    ],
)
def test_invalid_values_name_the_path(text: str, path: str) -> None:
    lines = problems(text)
    assert any(line.startswith(f"{path}: ") for line in lines), lines


def test_invalid_toml_is_one_problem_line() -> None:
    lines = problems("[openrouter\nbase_url = ")
    assert len(lines) == 1 and lines[0].startswith("settings: ")


def test_several_problems_are_all_reported() -> None:
    text = (
        "[schedule]\ninterval='0s'\n"
        + rule("name='a'\ntype='threshold'\nbelow=true")
        + rule("name='b'\ntype='nope'")
    )
    paths = [p.split(": ")[0] for p in problems(text)]
    assert {"schedule.interval", "rules[0].below", "rules[1].type"} <= set(paths)


# --------------------------------------------------------------------------- base_url


@pytest.mark.parametrize(
    "url",
    [
        "https://openrouter.ai/api/v1",
        "https://10.0.0.1/api",
        "https://example.com:8443/x/",
        "http://127.0.0.1",
        "http://127.0.0.1:8080/api/v1",
        "http://127.5.6.7:1/",
        "http://localhost:9000",
        "http://[::1]:9000/api",
        "http://[::1]:9000/api/v1",
        "http://localhost:8080/api/v1",
        "http://127.0.0.1:65535/api/v1",
    ],
)
def test_base_url_accepted(url: str) -> None:
    s = parse(f"[openrouter]\nbase_url = '{url}'")
    assert s.openrouter.base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://openrouter.ai/api/v1",
        "http://10.0.0.1/api",
        "http://192.168.1.1",
        "http://0.0.0.0:8080",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example",
        "http://[::ffff:8.8.8.8]/",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_an_error(url: str) -> None:
    lines = problems(f"[openrouter]\nbase_url = '{url}'")
    assert len(lines) == 1 and lines[0].startswith("openrouter.base_url: ")
    assert "https" in lines[0]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:65536/api/v1",
        "http://127.0.0.1:99999",
        "https://openrouter.ai:0/api/v1",
        "http://127.0.0.1:80a/api/v1",
        "http://localhost:-1/",
        "https://openrouter.ai/api/v1\t",
        "https://openrouter.ai/api\tv1",
        "https://openrouter.ai/api v1",
        " https://openrouter.ai/api/v1",
        "https://openrouter.ai/api/v1\n",
        "https://openrouter.ai/api/v1\u0000",
        "https://openrouter.ai/api/v1\u00a0",
        "https://openrouter.ai/api/v1#fragment",
        "https://openrouter.ai/api/v1#",
        "https://openrouter.ai/api/v1?x=1",
        "https://openrouter.ai/api/v1?",
    ],
)
def test_base_url_with_a_bad_port_whitespace_a_fragment_or_a_query_is_an_error(url: str) -> None:
    lines = problems(f"[openrouter]\nbase_url = {json.dumps(url)}")
    assert len(lines) == 1 and lines[0].startswith("openrouter.base_url: "), lines


# --------------------------------------------------------------------------- nesting


DEEP = {
    "600 arrays": "a = " + "[" * 600 + "]" * 600,
    "600 inline tables": "a = " + "{b = " * 600 + "1" + "}" * 600,
    "100 arrays in a known key": "[[channels]]\nname = 'c'\nurl = " + "[" * 100 + "]" * 100,
    "100 dotted keys": "a" + ".b" * 100 + " = 1",
    "100 table headers": "[" + ".".join(["t"] * 100) + "]\nx = 1",
    "arrays of tables": "".join(f"[[{'.'.join(['r'] * n)}]]\n" for n in range(1, 60)),
}


@pytest.mark.parametrize("text", DEEP.values(), ids=list(DEEP))
def test_nesting_past_a_sane_depth_is_one_line(text: str) -> None:
    lines = problems(text)
    assert len(lines) == 1 and lines[0].startswith("settings: ") and "nested" in lines[0], lines


def test_nesting_within_the_limit_is_judged_as_usual() -> None:
    assert problems("a = " + "[" * 20 + "]" * 20) == ["a: unknown setting"]


# --------------------------------------------------------------------------- API key


@pytest.mark.parametrize("key", ["sk-or-v1-abc\u00e9", "sk-or-v1-abc def", "sk-or-v1-abc\n",
                                 "\u00a0sk-or-v1-abc", "sk-or\x01-v1-abc", "sk-or-v1-\u200babc",
                                 "sk-or-v1-abc\t", "sk-or-v1-ключ"])
def test_an_api_key_that_is_not_printable_ascii_is_named_never_echoed(key: str) -> None:
    problem = parse("").openrouter.key_problem({"OPENROUTER_API_KEY": key})
    assert problem is not None and problem.startswith("openrouter.api_key_env: "), problem
    assert "OPENROUTER_API_KEY" in problem and "printable ASCII" in problem
    assert "sk-or" not in problem and "abc" not in problem
    assert_one_problem_line(problem)


@pytest.mark.parametrize("key", ["sk-or-v1-0123456789abcdef", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~", "x"])
def test_a_printable_ascii_api_key_is_fine(key: str) -> None:
    assert parse("").openrouter.key_problem({"OPENROUTER_API_KEY": key}) is None


@pytest.mark.parametrize("environ", [{}, {"OPENROUTER_API_KEY": ""}])
def test_a_missing_api_key_names_the_variable(environ: dict[str, str]) -> None:
    problem = parse("").openrouter.key_problem(environ)
    assert problem is not None and "OPENROUTER_API_KEY is not set or empty" in problem


# --------------------------------------------------------------------------- secrets


CANARY = "CANARY-SECRET-123"

# Places where a secret may sit (usually through ${VAR}) and that fail validation.
CANARY_CASES = [
    f"[[channels]]\nname='c'\nurl='{CANARY}'",
    "[[channels]]\nname='c'\nurl='${SECRET}'",
    "[[channels]]\nname='c'\nurl=5\n[[channels]]\nname='d'\nurl='json://u:${SECRET}@h'",
    "[[channels]]\nname='c'\nurl=['${SECRET}']",
    "[[channels]]\nname='c'\nurl={x='${SECRET}'}",
    "[database]\nurl='${SECRET}'",
    "[database]\nurl=['postgresql://u:${SECRET}@h/db']",
    "[database]\nurl='postgresql://u:${SECRET}@h/db'\nkeep_raw='2y'\nkeep_rollups='1d'",
    "[openrouter]\nbase_url='${SECRET}'",
    "[openrouter]\nbase_url='https://u:${SECRET}@example.com'",
    "[openrouter]\nbase_url='http://example.com/${SECRET}'",
    "[openrouter]\napi_key_env='${SECRET}'",
    "[openrouter]\ntimeout='${SECRET}'",
    "[schedule]\ninterval='${SECRET}'",
    "[alerts]\nrepeat_interval='${SECRET}'",
    "[alerts]\nsend_resolved='${SECRET}'",
    "[forecast]\nwindow='${SECRET}'",
    rule(f"name='r'\ntype='threshold'\nbelow='{CANARY}'"),
    rule("name='r'\ntype='threshold'\nbelow='${SECRET}'"),
    rule("name='r'\ntype='threshold'\nbelow_percent='${SECRET}'"),
    rule("name='r'\ntype='threshold'\nbelow=1\nclear_above='${SECRET}'"),
    rule("name='r'\ntype='threshold'\nbelow=1\nseverity='${SECRET}'"),
    rule("name='r'\ntype='threshold'\nbelow=1\nchannels='${SECRET}'"),
    rule("name='r'\ntype='threshold'\nbelow=1\nfor='${SECRET}'"),
    rule("name='r'\ntype='burn_rate'\nwindow='${SECRET}'\nabove='${SECRET}'"),
    rule("name='r'\ntype='burn_rate'\nwindow='1h'\nshort_window='${SECRET}'\nabove=1"),
    rule("name='r'\ntype='runway'\nwindow='1h'\nbelow='${SECRET}'"),
    rule("name='r'\ntype='fetch_failure'\nconsecutive='${SECRET}'"),
    # A valid secret-bearing channel next to unrelated problems.
    "[[channels]]\nname='c'\nurl='json://u:${SECRET}@h'\n[schedule]\ninterval='nope'",
    "[[channels]]\nname='c'\nurl='json://u:${SECRET}@h'\n[[channels]]\nname='c'\nurl='x://y'",
    "[[channels]]\nname='c'\nurl='json://u:${SECRET}@h'\n" + rule("name='r'\ntype='x'"),
    f"[[channels]]\nname='c'\nurl='json://u:{CANARY}@h'\nnonsense = [",
    f"[[channels]]\nname='c'\nurl='json://u:{CANARY}@h\n",
]


@pytest.mark.parametrize("text", CANARY_CASES)
def test_no_problem_line_echoes_a_secret(text: str) -> None:
    lines = problems(text, {"SECRET": CANARY})
    assert CANARY not in "\n".join(lines)
    assert "SECRET-123" not in "\n".join(lines)


# --------------------------------------------------------------------------- fuzz

KEYS = {
    "openrouter": ["base_url", "api_key_env", "timeout"],
    "schedule": ["interval"],
    "database": ["url", "keep_raw", "keep_rollups"],
    "alerts": ["repeat_interval", "send_resolved"],
    "forecast": ["window"],
}
RULE_KEYS = ["name", "type", "below", "below_percent", "clear_above", "severity", "channels",
             "for", "window", "short_window", "above", "consecutive", "bogus"]
RULE_TYPES = ["threshold", "burn_rate", "runway", "fetch_failure", "thresold", ""]
STRINGS = st.one_of(
    st.sampled_from(["5m", "1h30m", "0s", "-1s", "24h", "1y", "https://x.example", "http://1.2.3.4",
                     "http://127.0.0.1:1", "sqlite:///x.db", "json://h", "warning", "critical",
                     "info", "chat", "r", "${SECRET}", "${UNSET}", "$$", "${}", "1e3", "nan",
                     "http://[::1", "https://h:99999", CANARY]),
    st.text(max_size=12),
)


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def scalars() -> st.SearchStrategy[str]:
    return st.one_of(
        STRINGS.map(toml_string),
        st.integers(-10**20, 10**20).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["true", "false", "nan", "inf", "-inf", "1979-05-27T07:32:00Z",
                         "07:32:00", "1979-05-27", "[]", "{}", '["chat"]', "[1, 2]",
                         '{x = "${SECRET}"}', "0", "-0.0", "1e308"]),
    )


@st.composite
def documents(draw: st.DrawFn) -> str:
    out = []
    for section in draw(st.lists(st.sampled_from([*KEYS, "bogus"]), unique=True)):
        out.append(f"[{section}]")
        keys = [*KEYS.get(section, []), "zzz"]
        for key in draw(st.lists(st.sampled_from(keys), unique=True)):
            out.append(f"{key} = {draw(scalars())}")
    for _ in range(draw(st.integers(0, 3))):
        out.append("[[channels]]")
        for key in draw(st.lists(st.sampled_from(["name", "url", "extra"]), unique=True)):
            out.append(f"{key} = {draw(scalars())}")
    for _ in range(draw(st.integers(0, 3))):
        out.append("[[rules]]")
        if draw(st.booleans()):
            out.append(f"type = {toml_string(draw(st.sampled_from(RULE_TYPES)))}")
        for key in draw(st.lists(st.sampled_from(RULE_KEYS), unique=True)):
            out.append(f"{key} = {draw(scalars())}")
    return "\n".join(out) + "\n"


FUZZ_ENV = {"SECRET": CANARY, "SLACK_WEBHOOK_URL": SLACK}


def parse_or_problems(text: str) -> Settings | list[str]:
    try:
        result = parse_settings(text, FUZZ_ENV)
    except SettingsError as err:
        assert err.problems
        for line in err.problems:
            assert_one_problem_line(line)
        return err.problems
    assert isinstance(result, Settings)
    return result


@FAST
@given(documents())
def test_fuzz_documents_give_settings_or_settings_error(text: str) -> None:
    outcome = parse_or_problems(text)
    if isinstance(outcome, Settings):
        # Whatever parses has exactly one fetch_failure rule or more, and unique names.
        assert any(isinstance(r, FetchFailureRule) for r in outcome.rules)
        names = [r.name for r in outcome.rules]
        assert len(names) == len(set(names))


@FAST
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    parse_or_problems(text)


# Fields whose problem line may quote the value by design: the rule type (the
# contract's own example quotes it), and names and channel references, which are
# identifiers rather than secrets.
QUOTING_KEYS = {"type", "name", "channels"}


@FAST
@given(
    st.sampled_from([(s, k) for s, ks in KEYS.items() for k in ks]
                    + [("rules", k) for k in RULE_KEYS if k not in QUOTING_KEYS]
                    + [("channels", "url")]),
    st.sampled_from(["${SECRET}", f"{CANARY}", "x${SECRET}x", "https://u:${SECRET}@h",
                     "http://h/${SECRET}", "1${SECRET}m"]),
    st.sampled_from(["plain", "array", "table"]),
)
def test_fuzz_a_secret_in_any_field_never_reaches_a_problem(
    where: tuple[str, str], value: str, shape: str
) -> None:
    section, key = where
    literal = {"plain": toml_string(value), "array": f"[{toml_string(value)}]",
               "table": f"{{v = {toml_string(value)}}}"}[shape]
    if section == "rules":
        text = rule(f"name='r'\ntype='threshold'\nbelow=1\n{key} = {literal}"
                    if key not in ("below",) else f"name='r'\ntype='threshold'\n{key} = {literal}")
    elif section == "channels":
        text = f"[[channels]]\nname='c'\n{key} = {literal}"
    else:
        text = f"[{section}]\n{key} = {literal}"
    outcome = parse_or_problems(text)
    if isinstance(outcome, list):
        assert not any(CANARY in line for line in outcome), outcome
    else:
        assert CANARY not in repr(outcome)


VAR_CANARY = "CANARY-FROM-VAR-7d8e9f"  # also a valid name: only context makes it wrong
# Every string setting, each with values built around ${S} that cannot be valid there.
VAR_TEMPLATES = [
    "[openrouter]\nbase_url = {v}", "[openrouter]\napi_key_env = {v}", "[openrouter]\ntimeout = {v}",
    "[schedule]\ninterval = {v}", "[database]\nurl = {v}", "[database]\nkeep_raw = {v}",
    "[database]\nkeep_rollups = {v}", "[database]\ntimeout = {v}", "[alerts]\nrepeat_interval = {v}",
    "[alerts]\nsend_resolved = {v}", "[alerts]\nsend_timeout = {v}", "[alerts]\ngive_up_after = {v}",
    "[forecast]\nwindow = {v}",
    "[[channels]]\nname = {v}\nurl = 'json://h'", "[[channels]]\nname = 'c'\nurl = {v}",
    rule("name = {v}\ntype = 'threshold'\nbelow = 1"),
    rule("name = 'r'\ntype = {v}\nbelow = 1"),
    rule("name = 'r'\ntype = 'threshold'\nbelow = 1\nseverity = {v}"),
    rule("name = 'r'\ntype = 'threshold'\nbelow = 1\nfor = {v}"),
    rule("name = 'r'\ntype = 'threshold'\nbelow = {v}"),
    rule("name = 'r'\ntype = 'threshold'\nbelow_percent = {v}"),
    rule("name = 'r'\ntype = 'threshold'\nbelow = 1\nclear_above = {v}"),
    rule("name = 'r'\ntype = 'burn_rate'\nwindow = {v}\nabove = 1"),
    rule("name = 'r'\ntype = 'burn_rate'\nwindow = '1h'\nshort_window = {v}\nabove = 1"),
    rule("name = 'r'\ntype = 'burn_rate'\nwindow = '1h'\nabove = {v}"),
    rule("name = 'r'\ntype = 'runway'\nwindow = '1h'\nbelow = {v}"),
    rule("name = 'r'\ntype = 'fetch_failure'\nconsecutive = {v}"),
    # Cross-references: a duplicate name and an undefined channel, from ${S}.
    "[[channels]]\nname = {v}\nurl = 'json://h'\n[[channels]]\nname = {v}\nurl = 'json://h'",
    rule("name = {v}\ntype = 'runway'\nwindow = '1h'\nbelow = '1h'")
    + rule("name = {v}\ntype = 'runway'\nwindow = '1h'\nbelow = '1h'"),
    CHANNEL + rule("name = 'r'\ntype = 'threshold'\nbelow = 1\nchannels = [{v}]"),
]
VAR_VALUES = ["${S}", "x${S}", "${S} x", "1${S}", "5m${S}", "https://${S}:99999/x", "json://u:${S}@h",
              "http://[::1${S}", "${S}${S}"]


@pytest.mark.parametrize("template", VAR_TEMPLATES)
def test_a_value_from_a_variable_is_never_echoed(template: str) -> None:
    refused = 0
    for value in VAR_VALUES:
        try:
            parse_settings(template.format(v=json.dumps(value)), {"S": VAR_CANARY})
        except SettingsError as err:
            refused += 1
            assert not any("7d8e9f" in line for line in err.problems), err.problems
    assert refused, "no value was refused: the case proves nothing"


def test_problem_lines_match_the_documented_shape() -> None:
    text = rule("name='low'\ntype='thresold'\nbelow=10")
    line = problems(text)[0]
    assert re.match(r"^rules\[0\]\.type: unknown rule type 'thresold'", line)
