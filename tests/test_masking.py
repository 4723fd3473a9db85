"""Masking is exact: scheme, host and port of a channel stay visible in logs and `config
check`; credentials, tokens and secret path parts are masked; ordinary words never turn
into `***`. apprise's own warnings about a URL it cannot load never reach stderr raw, and a
malformed URL of a plugin apprise has is called malformed, not unsupported.

The unit cases pin down `redact.inspect_url`; the CLI cases show what an operator sees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import Cli, StartCli
from fakes import FakeOpenRouter, WebhookReceiver, make_settings, write_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import logs
from worker.redact import MASK, Redactor, UrlInfo, channel_problems, credentials, inspect_url

KEY = "sk-or-v1-masking-0009"
TOKEN = "Zk3vQ9xW7mT2pL8rN4bY6cH1"  # 24 characters, mixed case and digits: a webhook token


# --------------------------------------------------------------------------- inspect_url


SHOWN = [
    # Ordinary words in a webhook path stay as written; nothing is secret.
    ("json://127.0.0.1:8080/hooks/balance", "json://127.0.0.1:8080/hooks/balance"),
    ("json://hooks.example.com/hooks/creditwatch?method=POST",
     "json://hooks.example.com/hooks/creditwatch?method=POST"),
    ("jsons://[::1]:8443/api/v1/services", "jsons://[::1]:8443/api/v1/services"),
    # Credentials, token-like path parts and secret-named query values are masked.
    (f"json://cw:pw@127.0.0.1:9/hooks/{TOKEN}?-token=abc&method=POST",
     "json://cw:***@127.0.0.1:9/hooks/***?-token=***&method=POST"),
    ("jsons://user:pw@example.com:8443/x?+X-Api-Key=k1&:apikey=k2",
     "jsons://user:***@example.com:8443/x?+X-Api-Key=***&:apikey=***"),
    ("form://example.com/hooks/550e8400-e29b-41d4-a716-446655440000",
     "form://example.com/hooks/***"),
    # The plugin says which tokens are private, wherever they sit.
    ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "slack://***/***/***"),
    ("https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
     "https://hooks.slack.com/services/***/***/***"),
    ("mailtos://user:p4@example.com?to=ops@example.com",
     "mailtos://user:***@example.com?to=ops@example.com"),
    ("tgram://123456789:ABCdefGHIjklMNOpqrSTUvwxYZ/12345678", "tgram://***/12345678"),
    ("pover://u7sw2qa1bnruvq9ai7p1ej8dwjt7dn@a4zhpr6y8eqk1j5vyc3jyhfqyus1vb", "pover://***@***"),
    ("gotify://gotify.example.com/AbCdEfGhIjKlMnO", "gotify://gotify.example.com/***"),
    # A documented choice of a secret-sounding argument is no secret.
    ("ntfys://user:pass@ntfy.example.com/alerts?auth=basic",
     "ntfys://user:***@ntfy.example.com/alerts?auth=basic"),
]


@pytest.mark.parametrize(("url", "shown"), SHOWN)
def test_inspect_url_shows_scheme_host_and_port_and_masks_the_secrets(url: str, shown: str) -> None:
    info = inspect_url(url)
    assert info.valid and info.problem is None, info
    assert info.shown == shown
    for piece in re.findall(r"[^/:@?&=]+", url):
        if piece not in re.findall(r"[^/:@?&=]+", shown):  # masked: the redactor must know it
            assert any(piece in secret for secret in info.secrets), (piece, info.secrets)


@pytest.mark.parametrize("url", [url for url, _ in SHOWN])
def test_inspect_url_registers_no_ordinary_word(url: str) -> None:
    words = {"json", "jsons", "hooks", "balance", "creditwatch", "api", "v1", "services",
             "example.com", "127.0.0.1", "method", "POST", "alerts", "basic", "user", "ops@example.com"}
    assert not words & set(inspect_url(url).secrets)


def test_inspect_url_registers_encoded_and_decoded_forms() -> None:
    info = inspect_url("json://cw:p%40ss%2Fw0rd@127.0.0.1/hook?token=a%20b%2Bc")
    assert {"p%40ss%2Fw0rd", "p@ss/w0rd", "a%20b%2Bc", "a b+c"} <= set(info.secrets)
    assert info.shown == "json://cw:***@127.0.0.1/hook?token=***"


def test_inspect_url_result_is_plain_data() -> None:
    # The lead runs it in a child process and sends the answer back as JSON.
    info = inspect_url(f"json://u:p@h/x/{TOKEN}")
    back = json.loads(json.dumps(dataclasses.asdict(info)))
    assert UrlInfo(**{**back, "secrets": tuple(back["secrets"])}) == info


MALFORMED = [
    ("slack://T000/B000", "slack://"),
    ("mailto://cw:pw@127.0.0.1:2525?to=a@b.c&from=x@y.z", "mailto://"),
]


@pytest.mark.parametrize(("url", "scheme"), MALFORMED)
def test_a_malformed_url_of_a_known_plugin_is_called_malformed(
        url: str, scheme: str, capsys: pytest.CaptureFixture[str]) -> None:
    info = inspect_url(url)
    assert not info.valid
    assert info.problem is not None and "malformed" in info.problem and scheme in info.problem
    assert "does not support" not in info.problem
    assert "\n" not in info.problem
    for part in ("T000", "B000", "cw:pw", "x@y.z", "127.0.0.1"):
        assert part not in info.problem, info.problem
    assert info.shown == f"{scheme}{MASK}"
    assert capsys.readouterr() == ("", "")  # apprise's warnings stay inside


@pytest.mark.parametrize("url", ["nosuchservice://TOKENSECRET@example.com/", "not-a-url",
                                 "https://example.com/CANARY-hook-2c3d4e"])
def test_an_unknown_url_never_echoes_its_parts(url: str) -> None:
    info = inspect_url(url)
    assert not info.valid and info.problem
    for part in ("nosuchservice", "TOKENSECRET", "example.com", "CANARY"):
        assert part not in info.problem
    assert url in info.secrets


SECRET_TEXT = st.text("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789-_", min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(password=SECRET_TEXT, token=SECRET_TEXT.map(lambda t: f"{t}9Zz{t}" + "x7Q" * 5),
       query=SECRET_TEXT, scheme=st.sampled_from(["json", "jsons", "form", "xml"]))
def test_no_secret_part_of_a_webhook_url_is_ever_shown(
        password: str, token: str, query: str, scheme: str) -> None:
    url = f"{scheme}://cw:{password}@127.0.0.1:8080/hooks/{token}?+X-Token={query}&method=POST"
    info = inspect_url(url)
    assert info.valid, info
    assert info.shown == f"{scheme}://cw:***@127.0.0.1:8080/hooks/***?+X-Token=***&method=POST"
    assert {password, token, query} <= set(info.secrets)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=60) | st.text(max_size=40).map(lambda t: f"json://{t}"))
def test_inspect_url_takes_any_text(url: str) -> None:
    info = inspect_url(url)
    assert isinstance(info, UrlInfo)
    assert info.valid == (info.problem is None)
    assert info.problem is None or "\n" not in info.problem


def test_channel_problems_name_the_index_and_the_channel() -> None:
    problems = channel_problems({"ok": "json://127.0.0.1:9/x", "chat": "slack://T000/B000",
                                 "bad": "nosuch://x"})
    assert [p.split(": ", 1)[0] for p in problems] == ["channels[1].url", "channels[2].url"]
    assert "'chat'" in problems[0] and "'bad'" in problems[1]


# --------------------------------------------------------------------------- the redactor


def test_the_redactor_leaves_ordinary_words_alone() -> None:
    redact = Redactor()
    for url in ("json://127.0.0.1:8080/hooks/balance", "json://127.0.0.1:8080/hooks/creditwatch"):
        redact.add(inspect_url(url).secrets)
    line = "tick fetch=ok balance=$4.21 delivered=1; creditwatch running: a tick every 60s"
    assert redact(line) == line


def test_a_short_password_is_masked_where_it_stands_as_a_password() -> None:
    redact = Redactor([*credentials("postgresql+psycopg://cw:pw12@db/x?sslpassword=k9")])
    assert redact("connect postgresql+psycopg://cw:pw12@db/x?sslpassword=k9 failed") == (
        "connect postgresql+psycopg://cw:***@db/x?sslpassword=*** failed")
    assert redact("pw12 and k9 elsewhere are not touched") == "pw12 and k9 elsewhere are not touched"


def test_credentials_of_a_database_url() -> None:
    found = credentials("postgresql://u:p%40ss@h/db?password=qpw&sslmode=require&passfile=/x")
    assert {"p%40ss", "p@ss", "qpw"} <= set(found)
    assert "require" not in found and "u" not in found


# --------------------------------------------------------------------------- log lines


def test_a_log_record_is_one_line_whatever_its_message(
        capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    logs.setup("INFO", Redactor(["sk-or-v1-secret-key"]))
    log = logging.getLogger("creditwatch.test")
    log.warning("fetch failed: %s", "bad\r\nFORGED 2026 ERROR line\x1b[2J\x07 sk-or-v1-secret-key\u2028end")
    try:
        raise ValueError("boom\x1b[31m")
    except ValueError:
        log.exception("with a traceback")

    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "FORGED" in lines[0] and "end" in lines[0], lines
    assert not lines[1].startswith("FORGED")
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err and "\u2028" not in err
    assert "sk-or-v1-secret-key" not in err
    assert "Traceback (most recent call last):" in err  # tracebacks still span lines
    assert "ValueError: boom\\x1b[31m" in err


# --------------------------------------------------------------------------- the real CLI


def hook(webhook: WebhookReceiver, path: str) -> str:
    return f"json://127.0.0.1:{webhook.port}/{path}"


def test_config_check_shows_scheme_host_and_port_of_each_channel(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    channels = {"plain": hook(webhook, "hooks/balance"),
                "secret": f"json://cw:pw@127.0.0.1:{webhook.port}/hooks/{TOKEN}?-token=t0k&method=POST",
                "mail": "mailtos://ops:p4@mail.example.com:587?to=ops@example.com"}
    cfg = make_settings(tmp_path, fake_api, channels=channels)

    result = cli(cfg, "config", "check")

    assert result.code == 0, result
    urls = re.findall(r'^url = "(.*)"$', result.stdout.split("[[channels]]", 1)[1], re.MULTILINE)
    assert urls == [
        f"json://127.0.0.1:{webhook.port}/hooks/balance",
        f"json://cw:***@127.0.0.1:{webhook.port}/hooks/***?-token=***&method=POST",
        "mailtos://ops:***@mail.example.com:587?to=ops@example.com",
    ]
    for secret in (TOKEN, "t0k", ":pw@", ":p4@"):
        assert secret not in result.stdout + result.stderr


def test_ordinary_words_in_a_channel_path_are_never_masked_in_logs(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    channels = {"a": hook(webhook, "hooks/balance"), "b": hook(webhook, "hooks/creditwatch"),
                "c": hook(webhook, f"hooks/{TOKEN}")}
    rules = '[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 10.0\n'
    cfg = make_settings(tmp_path, fake_api, channels=channels, rules=rules)
    fake_api.set_balance(100.0, 95.79)

    result = cli(cfg, "--log-level", "DEBUG", "check")

    assert result.code == 1, result
    assert len(webhook.messages) == 3
    assert "balance=$4.21" in result.stderr, result.stderr
    assert MASK not in result.stderr, result.stderr
    assert TOKEN not in result.stderr


def test_the_start_up_line_of_run_is_not_masked(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        start_cli: StartCli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"hook": hook(webhook, "hooks/creditwatch")})
    fake_api.set_balance(100.0, 10.0)
    proc = start_cli("run", config=cfg, env={"OPENROUTER_API_KEY": KEY})
    deadline = time.monotonic() + 20
    while "balance=" not in proc.output()[1] and time.monotonic() < deadline:
        time.sleep(0.1)

    result = proc.stop(signal.SIGTERM)

    assert result.code == 0, result
    assert "creditwatch running" in result.stderr, result.stderr
    assert MASK not in result.stderr, result.stderr


def test_a_malformed_slack_url_is_one_line_that_says_malformed(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = make_settings(tmp_path, fake_api, channels={"chat": "slack://T000/B000"})

    for args in (("config", "check"), ("check",)):
        result = cli(cfg, *args)

        assert result.code == 78, result
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr  # apprise's own warnings never reach stderr
        assert lines[0].startswith("channels[0].url: ")
        assert "slack://" in lines[0] and "malformed" in lines[0] and "'chat'" in lines[0]
        assert "does not support" not in lines[0]
        assert "T000" not in lines[0] and "B000" not in lines[0]
    assert fake_api.count == 0


DB_PASSWORD = "Qpw7"  # short: below any length a redactor could mask everywhere


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://cw@127.0.0.1:1/x?password={DB_PASSWORD}&connect_timeout=2",
    f"postgresql+psycopg://cw:{DB_PASSWORD}@127.0.0.1:1/x?connect_timeout=2",
])
def test_a_database_password_is_masked_everywhere(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli, url: str) -> None:
    cfg = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "1s"
        [database]
        url = "{url}"
        """)

    shown = cli(cfg, "config", "check")
    failed = cli(cfg, "status")

    assert shown.code == 0, shown
    assert "127.0.0.1:1/x" in shown.stdout
    assert failed.code == 1 and "database" in failed.stderr, failed
    for result in (shown, failed):
        assert DB_PASSWORD not in result.stdout + result.stderr, result


def test_a_database_url_error_never_echoes_the_password(
        tmp_path: Path, fake_api: FakeOpenRouter, cli: Cli) -> None:
    cfg = write_settings(tmp_path, f"""
        [database]
        url = "sqlite://cw:{DB_PASSWORD}@/x?password={DB_PASSWORD}"
        """)

    result = cli(cfg, "config", "check")

    assert result.code == 78, result
    assert result.stderr.startswith("database.url: "), result.stderr
    assert DB_PASSWORD not in result.stdout + result.stderr, result
