"""End to end through the real `creditwatch` command: status, history, notify-test, db upgrade,
config check, settings errors (exit 78) and command-line mistakes."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, Result, RunCli
from fakes import FakeOpenRouter, SmtpServer, WebhookReceiver, make_settings, write_settings

KEY = "sk-or-v1-e2e-commands-0003"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
# `path: message`, the path naming a setting such as rules[0].type or schedule.interval.
PROBLEM_LINE = re.compile(r"^[A-Za-z_][\w-]*(\[\d+\])?(\.[\w-]+(\[\d+\])?)*: \S.*$")


def assert_one_line_error(result: Result) -> None:
    assert result.code != 0, result
    assert "Traceback" not in result.stderr + result.stdout, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    assert result.stdout == "", result


def load_json(result: Result) -> Any:
    assert result.code == 0, result
    return json.loads(result.stdout)


LOW_RULE = """
[[rules]]
name = "low"
type = "threshold"
below = 95.0
"""


# --------------------------------------------------------------------------- status


def test_status_json_and_text_after_two_checks(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api, rules=LOW_RULE)
    fake_api.set_balance(100.0, 10.0)
    assert cli(cfg, "check").code == 1  # $90 < $95
    fake_api.set_balance(100.0, 12.0)
    assert cli(cfg, "check").code == 1

    doc = load_json(cli(cfg, "status", "--json", key=False))

    for field in ("fetched_at", "total_credits", "total_usage", "remaining",
                  "burn_rate_per_hour", "runway_hours", "last_fetch", "alerts"):
        assert field in doc, field
    assert ISO_Z.match(doc["fetched_at"])
    assert (doc["total_credits"], doc["total_usage"], doc["remaining"]) == (100.0, 12.0, 88.0)
    burn = doc["burn_rate_per_hour"]
    assert isinstance(burn, float) and burn > 0  # $2 over a second or so
    assert doc["runway_hours"] == pytest.approx(88.0 / burn, rel=1e-6)
    assert set(doc["last_fetch"]) == {"at", "ok", "error"}
    assert ISO_Z.match(doc["last_fetch"]["at"])
    assert doc["last_fetch"]["ok"] is True and doc["last_fetch"]["error"] is None
    [alert] = doc["alerts"]
    assert {"rule", "severity", "since", "message"} <= set(alert)
    assert (alert["rule"], alert["severity"]) == ("low", "warning")
    assert ISO_Z.match(alert["since"]) and alert["since"] <= doc["fetched_at"]
    assert isinstance(alert["message"], str) and alert["message"]

    text = cli(cfg, "status", key=False)
    assert text.code == 0, text
    assert "$88.00" in text.stdout
    assert "low" in text.stdout and "warning" in text.stdout.lower()
    assert not text.stdout.lstrip().startswith("{")


def test_status_on_a_fresh_database_has_no_reading(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api)
    assert cli(cfg, "db", "upgrade", key=False).code == 0

    doc = load_json(cli(cfg, "status", "--json", key=False))

    assert doc["fetched_at"] is None and doc["remaining"] is None
    assert doc["burn_rate_per_hour"] is None and doc["runway_hours"] is None
    assert doc["alerts"] == []
    assert fake_api.count == 0


def test_status_before_any_migration_is_one_clear_line_and_writes_nothing(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api)
    assert_one_line_error(cli(cfg, "status", key=False))
    # A read-only command has no business creating an (empty) database file.
    assert not list(tmp_path.glob("cw.db*")), "status created a database file"


# --------------------------------------------------------------------------- history


def test_history_formats_order_and_since(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api)
    fake_api.set_balance(100.0, 10.0)
    assert cli(cfg, "check").code == 0
    first_done = time.monotonic()  # the first reading is at least this old
    time.sleep(4)
    fake_api.set_balance(100.0, 20.0)
    assert cli(cfg, "check").code == 0

    # Older than the first reading is old: only the second is inside the window.
    since = f"{int(time.monotonic() - first_done)}s"
    recent = load_json(cli(cfg, "history", "--since", since, "--format", "json", key=False))
    assert [r["total_usage"] for r in recent] == [20.0], since

    rows = load_json(cli(cfg, "history", "--since", "1h30m", "--format", "json", key=False))
    assert [set(r) for r in rows] == [{"fetched_at", "total_credits", "total_usage",
                                       "remaining"}] * 2
    assert [(r["total_credits"], r["total_usage"], r["remaining"]) for r in rows] == [
        (100.0, 10.0, 90.0), (100.0, 20.0, 80.0)]
    assert all(ISO_Z.match(r["fetched_at"]) for r in rows)
    assert rows[0]["fetched_at"] < rows[1]["fetched_at"]

    as_csv = cli(cfg, "history", "--format", "csv", key=False)
    assert as_csv.code == 0, as_csv
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["fetched_at"] for r in parsed] == [r["fetched_at"] for r in rows]
    assert [float(r["remaining"]) for r in parsed] == [90.0, 80.0]

    table = cli(cfg, "history", key=False)  # default: --format table --since 7d
    assert table.code == 0, table
    out = table.stdout
    assert rows[0]["fetched_at"] in out and rows[1]["fetched_at"] in out
    assert out.index(rows[0]["fetched_at"]) < out.index(rows[1]["fetched_at"])
    assert out.index("$90.00") < out.index("$80.00")
    assert fake_api.count == 2


# --------------------------------------------------------------------------- notify-test


def test_notify_test_all_one_unknown_and_failing_channel(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url(),
                                                      "email": smtp.apprise_url()})

    everyone = cli(cfg, "notify-test", key=False)
    assert everyone.code == 0, everyone
    assert len(webhook.messages) == 1 and len(smtp.wait_for(1)) == 1
    assert "hook" in everyone.stdout and "email" in everyone.stdout

    one = cli(cfg, "notify-test", "--channel", "hook", key=False)
    assert one.code == 0, one
    assert len(webhook.messages) == 2 and len(smtp.messages) == 1

    unknown = cli(cfg, "notify-test", "--channel", "pager", key=False)
    assert_one_line_error(unknown)
    assert "pager" in unknown.stderr
    assert len(webhook.requests) == 2 and len(smtp.messages) == 1

    webhook.set_failing(True)
    failing = cli(cfg, "notify-test", key=False)
    assert failing.code == 1, failing
    assert "Traceback" not in failing.stderr
    assert len(smtp.wait_for(2)) == 2, "a failing channel stopped the test of another"
    assert len(webhook.messages) == 2
    assert fake_api.count == 0


def test_notify_test_without_channels_is_a_failure_not_a_usage_error(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    """It exited 64, which is kept for command-line mistakes (issue 8)."""
    result = cli(make_settings(tmp_path, fake_api), "notify-test", key=False)
    assert result.code == 1, result
    assert result.stderr.count("\n") == 1 and "no channels are configured" in result.stderr
    assert result.stdout == ""


def test_an_overdrawn_balance_reads_the_same_in_the_log_and_in_outputs(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    """The log said $-15.00 where every output said -$15.00 (issue 8)."""
    fake_api.set_balance(100.0, 115.0)
    cfg = make_settings(tmp_path, fake_api)
    check = cli(cfg, "check")
    assert "balance=-$15.00" in check.stderr, check.stderr
    assert "-$15.00 remaining" in check.stdout, check.stdout
    assert "$-" not in check.stdout + check.stderr
    status = cli(cfg, "status")
    assert "-$15.00 remaining" in status.stdout and "$-" not in status.stdout


def test_status_json_is_valid_json_whatever_the_api_said(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    """After usage jumped to 1.7e308, status --json printed Infinity (issue 8)."""
    cfg = make_settings(tmp_path, fake_api)
    fake_api.set_balance(100.0, 10.0)
    assert cli(cfg, "check").code == 0
    fake_api.set_balance(1e12, 1.7e308)
    assert cli(cfg, "check").code == 3  # a bad response: above 1e12 USD
    fake_api.set_balance(1e12, 1e12)
    assert cli(cfg, "check").code == 0
    out = cli(cfg, "status", "--json").stdout
    json.loads(out, parse_constant=lambda name: pytest.fail(f"status --json printed {name}"))


# --------------------------------------------------------------------------- db upgrade


def test_db_upgrade_creates_the_schema_and_is_idempotent(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api)

    first = cli(cfg, "db", "upgrade", key=False)
    assert first.code == 0, first
    again = cli(cfg, "db", "upgrade", key=False)
    assert again.code == 0, again

    with sqlite3.connect(tmp_path / "cw.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        [(version,)] = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert "alembic_version" in tables and len(tables) > 1
    assert version
    assert fake_api.count == 0


# --------------------------------------------------------------------------- config check


def test_config_check_prints_resolved_settings_without_the_key(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"hook": "${HOOK_URL}"}, rules=LOW_RULE)
    env = {"HOOK_URL": webhook.apprise_url()}

    for key in (True, False):
        result = cli(cfg, "config", "check", key=key, env=env)
        assert result.code == 0, result
        assert KEY not in result.stdout + result.stderr
        resolved = tomllib.loads(result.stdout)
        rules = {r["name"]: r for r in resolved["rules"]}
        assert rules["low"]["severity"] == "warning"  # the default, filled in
        assert rules["fetch-failing"]["type"] == "fetch_failure"  # the default rule
        assert rules["fetch-failing"]["consecutive"] == 3
        assert rules["fetch-failing"]["severity"] == "critical"
        assert "${HOOK_URL}" not in result.stdout
        assert resolved["openrouter"]["base_url"] == fake_api.base_url
    assert fake_api.count == 0
    assert webhook.requests == []


# --------------------------------------------------------------------------- settings errors


INVALID = """
[openrouter]
base_url = "{base_url}"
timout = "1s"

[schedule]
interval = "soon"

[database]
url = "sqlite:///{tmp_path}/cw.db"

[alerts]
repeat_interval = 5

[[rules]]
name = "low"
type = "thresold"
below = 10.0
"""
EXPECTED_PATHS = ["openrouter.timout", "schedule.interval", "alerts.repeat_interval",
                  "rules[0].type"]


@pytest.mark.parametrize("command", [
    ["run"], ["check"], ["status"], ["history"], ["notify-test"], ["db", "upgrade"],
    ["config", "check"],
])
def test_invalid_settings_exit_78_with_one_line_per_problem(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli, command: list[str]) -> None:
    cfg = write_settings(tmp_path, INVALID.format(base_url=fake_api.base_url, tmp_path=tmp_path))

    result = cli(cfg, *command)

    assert result.code == 78, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(EXPECTED_PATHS), result.stderr
    assert all(PROBLEM_LINE.match(line) for line in lines), result.stderr
    for path in EXPECTED_PATHS:
        assert sum(line.startswith(f"{path}: ") for line in lines) == 1, (path, result.stderr)
    assert "thresold" in next(line for line in lines if line.startswith("rules[0].type"))
    assert not any(p.name.startswith("cw.db") for p in tmp_path.iterdir()), "database written"
    assert fake_api.count == 0


@pytest.mark.parametrize(("body", "path"), [
    ('[[channels]]\nname = "a"\nurl = "json://127.0.0.1:9/x"\n\n'
     '[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 1.0\nchannels = ["pager"]\n',
     "rules[0].channels[0]"),
    ('[[channels]]\nname = "a"\nurl = "${UNSET_HOOK_URL_FOR_TEST}"\n', "channels[0].url"),
])
def test_cross_checks_and_unset_variables_are_settings_errors(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli, body: str, path: str) -> None:
    cfg = make_settings(tmp_path, fake_api, rules=body)

    result = cli(cfg, "check")

    assert result.code == 78, result
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(path), line
    assert PROBLEM_LINE.match(line), line
    if "UNSET_HOOK_URL_FOR_TEST" in body:
        assert "UNSET_HOOK_URL_FOR_TEST" in line
    assert not (tmp_path / "cw.db").exists()
    assert fake_api.count == 0


def test_every_problem_is_reported_at_once(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    """One line per problem: an unset variable, a bad duration and an undefined channel
    are all reported by the same run, not one per attempt."""
    cfg = make_settings(tmp_path, fake_api, extra='[alerts]\nrepeat_interval = "often"\n',
                        channels={"hook": "${UNSET_HOOK_URL_FOR_TEST}"},
                        rules='[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 1.0\n'
                              'channels = ["pager"]\n')

    result = cli(cfg, "config", "check")

    assert result.code == 78, result
    lines = result.stderr.strip().splitlines()
    starts = sorted(line.split(":")[0] for line in lines)
    assert starts == ["alerts.repeat_interval", "channels[0].url", "rules[0].channels[0]"], lines


# --------------------------------------------------------------------------- the API key


@pytest.mark.parametrize(("command", "value"), [("check", None), ("run", "")])
def test_run_and_check_need_the_key(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli, command: str,
        value: str | None) -> None:
    cfg = make_settings(tmp_path, fake_api)

    result = cli(cfg, command, key=False, env={"OPENROUTER_API_KEY": value})

    assert result.code == 78, result
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "OPENROUTER_API_KEY" in line
    assert not any(p.name.startswith("cw.db") for p in tmp_path.iterdir())
    assert fake_api.count == 0


def test_missing_key_names_the_configured_variable(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api).read_text().replace(
        'timeout = "1s"', 'timeout = "1s"\napi_key_env = "CW_TEST_MGMT_KEY"')
    path = write_settings(tmp_path, cfg)

    result = cli(path, "check")  # OPENROUTER_API_KEY is set, but it is not the one named

    assert result.code == 78, result
    assert "CW_TEST_MGMT_KEY" in result.stderr
    assert fake_api.count == 0

    ok = cli(path, "check", key=False, env={"CW_TEST_MGMT_KEY": KEY})
    assert ok.code == 0, ok
    assert fake_api.requests[0].header("Authorization") == f"Bearer {KEY}"


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["history", "--since", "yesterday"],
    ["history", "--format", "xml"],
])
def test_command_line_mistakes_are_one_line(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli, args: list[str]) -> None:
    cfg = make_settings(tmp_path, fake_api)
    result = cli(cfg, *args)
    assert_one_line_error(result)
    assert fake_api.count == 0


@pytest.mark.parametrize("how", ["--config", "cwd"])
def test_missing_settings_file_is_one_line(
        tmp_path: Path, cli: Cli, run_cli: RunCli, how: str) -> None:
    missing = tmp_path / "nowhere" / "settings.toml"
    # With no --config, ./settings.toml is looked for, and there is none in the working directory.
    result = cli(missing if how == "--config" else None, "status")
    assert_one_line_error(result)
    assert not any(p.name.startswith("cw.db") for p in tmp_path.iterdir())


def test_settings_file_is_found_by_flag_then_env_then_cwd(
        tmp_path: Path, run_cli: RunCli) -> None:
    with FakeOpenRouter() as a, FakeOpenRouter() as b, FakeOpenRouter() as c:
        flag = make_settings(tmp_path, a, name="flag.toml")
        env = make_settings(tmp_path, b, name="env.toml")
        make_settings(tmp_path, c)  # ./settings.toml in the working directory

        def base_url(result: Result) -> str:
            assert result.code == 0, result
            return str(tomllib.loads(result.stdout)["openrouter"]["base_url"])

        assert base_url(run_cli("config", "check")) == c.base_url
        via_env = run_cli("config", "check", env={"CREDITWATCH_CONFIG": str(env)})
        assert base_url(via_env) == b.base_url
        via_flag = run_cli("config", "check", config=flag, env={"CREDITWATCH_CONFIG": str(env)})
        assert base_url(via_flag) == a.base_url
