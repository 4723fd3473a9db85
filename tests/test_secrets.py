"""The API key and every secret inside a channel URL never appear in stdout, stderr (DEBUG
included), the notifications received, or the bytes of the SQLite database.

Every secret below contains the marker "CANARY", so one substring search finds a whole
secret or any fragment of it. Each test also proves that the secrets really reached the
place they belong (the fake API, the webhook, the SMTP login), so it cannot pass by
accident because a secret was never used at all.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Result, RunCli
from fakes import FakeOpenRouter, RecordedRequest, Resp, SmtpServer, WebhookReceiver, write_settings

MARKER = "CANARY"
KEY = "sk-or-v1-CANARY-KEY-5f1e2d"
HOOK_PASSWORD = "CANARY-HOOK-PASS-6a1b0c"
HOOK_PATH_TOKEN = "CANARY-PATH-TOKEN-3b7c9a"
HOOK_QUERY_TOKEN = "CANARY-QUERY-TOKEN-8e2f4d"
SMTP_PASSWORD = "CANARY-SMTP-PASS-9d4e7f"


def hook_url(webhook: WebhookReceiver, *, password: bool = True, path: bool = True,
             query: bool = True) -> str:
    """A json:// URL with a Basic-auth password, a token in the path and one in the query."""
    auth = f"cw:{HOOK_PASSWORD}@" if password else ""
    route = f"/hook/{HOOK_PATH_TOKEN}" if path else "/hook"
    params = f"?-token={HOOK_QUERY_TOKEN}" if query else ""
    return f"json://{auth}127.0.0.1:{webhook.port}{route}{params}"


def write_secret_settings(tmp_path: Path, api: FakeOpenRouter, webhook: WebhookReceiver,
                          smtp: SmtpServer, *, consecutive: int = 3) -> Path:
    # The webhook URL comes whole from the environment, the SMTP password alone.
    mail = smtp.apprise_url(user="cw", password=SMTP_PASSWORD)
    assert SMTP_PASSWORD in mail
    mail = mail.replace(SMTP_PASSWORD, "${SMTP_PASSWORD}")
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "1s"

        [schedule]
        interval = "1s"

        [database]
        url = "sqlite:///{tmp_path}/cw.db"

        [[channels]]
        name = "hook"
        url = "${{HOOK_URL}}"

        [[channels]]
        name = "email"
        url = "{mail}"

        [[rules]]
        name = "low"
        type = "threshold"
        below = 10.0

        [[rules]]
        name = "unreadable"
        type = "fetch_failure"
        consecutive = {consecutive}
        severity = "critical"
        """)


class Witness:
    """Runs the CLI and keeps everything a user or a receiver could see."""

    def __init__(self, run_cli: RunCli, config: Path, webhook: WebhookReceiver) -> None:
        self._run_cli = run_cli
        self._config = config
        self.env = {"OPENROUTER_API_KEY": KEY, "SMTP_PASSWORD": SMTP_PASSWORD,
                    "HOOK_URL": hook_url(webhook)}
        self.seen: list[tuple[str, str]] = []

    def __call__(self, *args: str, debug: bool = True) -> Result:
        level = ("--log-level", "DEBUG") if debug else ()
        result = self._run_cli(*level, *args, config=self._config, env=self.env)
        label = " ".join(args) + (" (DEBUG)" if debug else "")
        self.seen += [(f"stdout of {label}", result.stdout), (f"stderr of {label}", result.stderr)]
        return result


def _which(text: str) -> str:
    names = {"the API key": KEY, "the webhook password": HOOK_PASSWORD,
             "the webhook path token": HOOK_PATH_TOKEN,
             "the webhook query token": HOOK_QUERY_TOKEN, "the SMTP password": SMTP_PASSWORD}
    found = [name for name, secret in names.items() if secret in text]
    return ", ".join(found) or "a fragment of a secret"


def _excerpt(text: str) -> str:
    at = text.find(MARKER)
    return text[max(0, at - 120): at + 80]


def assert_no_secret(witness: Witness, tmp_path: Path, webhook: WebhookReceiver,
                     smtp: SmtpServer) -> None:
    seen = list(witness.seen)
    seen += [(f"webhook message {i}", json.dumps(m)) for i, m in enumerate(webhook.messages)]
    seen += [(f"webhook request body {i}", r.body.decode("utf-8", "replace"))
             for i, r in enumerate(webhook.requests)]
    seen += [(f"mail {i}", m.raw.decode("utf-8", "replace")) for i, m in enumerate(smtp.messages)]
    leaks = [f"{label} has {_which(text)}: ...{_excerpt(text)}..."
             for label, text in seen if MARKER in text]
    assert not leaks, "a secret leaked:\n" + "\n".join(leaks)
    for path in sorted(tmp_path.glob("cw.db*")):
        data = path.read_bytes()
        assert MARKER.encode() not in data, f"a secret is stored in {path.name}"
        assert MARKER.encode("utf-16-le") not in data, f"a secret is stored in {path.name}"


def assert_secrets_were_used(api: FakeOpenRouter | None, webhook: WebhookReceiver | None,
                             smtp: SmtpServer | None) -> None:
    if api is not None:
        assert api.requests, "the API was never called"
        assert all(r.header("Authorization") == f"Bearer {KEY}" for r in api.requests)
    if webhook is not None:
        assert webhook.requests, "the webhook was never called"
        basic = "Basic " + base64.b64encode(f"cw:{HOOK_PASSWORD}".encode()).decode()
        wanted = hook_url(webhook).split(str(webhook.port), 1)[1].replace("?-", "?")
        for r in webhook.requests:
            assert r.path == wanted, r.path
            assert r.header("Authorization") == basic
    if smtp is not None:
        assert ("cw", SMTP_PASSWORD) in smtp.logins, smtp.logins


# --------------------------------------------------------------------------- ticks


def test_successful_ticks_and_reports_leak_nothing(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        run_cli: RunCli) -> None:
    cfg = write_secret_settings(tmp_path, fake_api, webhook, smtp)
    cli = Witness(run_cli, cfg, webhook)
    fake_api.set_balance(100.0, 95.0)  # "low" fires: both channels get a message

    assert cli("check", debug=False).code == 1
    assert cli("check").code == 1
    fake_api.set_balance(100.0, 50.0)
    assert cli("check").code == 0  # resolved: another message each
    for args in (["status"], ["status", "--json"], ["history", "--format", "json"]):
        assert cli(*args).code == 0, args

    assert len(webhook.messages) == 2
    smtp.wait_for(2)
    assert_secrets_were_used(fake_api, webhook, smtp)
    assert_no_secret(cli, tmp_path, webhook, smtp)


class EchoingApi(FakeOpenRouter):
    """An API (or a proxy in front of it) that echoes the Authorization header it got."""

    def __init__(self, answer: Callable[[str], Resp]) -> None:
        super().__init__()
        self._echo = answer

    def _answer_for(self, request: RecordedRequest) -> Resp:
        return self._echo(request.header("Authorization") or "")


ECHOES: dict[str, Callable[[str], Resp]] = {
    "401-json": lambda auth: Resp.json(
        {"error": {"message": f"Invalid credentials: {auth}", "code": 401}}, status=401),
    "500-json": lambda auth: Resp.json({"error": f"upstream failed for {auth}"}, status=500),
    "400-json": lambda auth: Resp.json({"error": {"message": f"bad request {auth}"}},
                                       status=400),
    "200-html": lambda auth: Resp.html(f"<p>Signed in as {auth}</p>"),
    "302-location": lambda auth: Resp.redirect("http://127.0.0.1:9/login?auth="
                                               + auth.replace(" ", "%20")),
}


@pytest.mark.parametrize("echo", list(ECHOES))
def test_fetch_errors_leak_nothing(
        tmp_path: Path, webhook: WebhookReceiver, smtp: SmtpServer, run_cli: RunCli,
        echo: str) -> None:
    with EchoingApi(ECHOES[echo]) as api:
        # consecutive = 1: every failure fires, so its message reaches the channels too.
        cfg = write_secret_settings(tmp_path, api, webhook, smtp, consecutive=1)
        cli = Witness(run_cli, cfg, webhook)

        result = cli("check")
        assert result.code == 2, result

        assert_secrets_were_used(api, webhook, smtp)
    assert webhook.messages, "the fetch_failure alert was not delivered"
    assert_no_secret(cli, tmp_path, webhook, smtp)


class EchoingWebhook(WebhookReceiver):
    """A receiver that refuses with an error page quoting the request line and credentials."""

    def _decide(self, request: RecordedRequest) -> Resp:
        with self._lock:
            failing = self._failing
        if failing:
            return Resp.json({"error": f"cannot POST {request.path}",
                              "auth": request.header("Authorization")}, status=500)
        return super()._decide(request)


def test_failing_channels_leak_nothing(
        tmp_path: Path, fake_api: FakeOpenRouter, smtp: SmtpServer, run_cli: RunCli) -> None:
    with EchoingWebhook() as webhook:
        cfg = write_secret_settings(tmp_path, fake_api, webhook, smtp)
        cli = Witness(run_cli, cfg, webhook)
        webhook.set_failing(True)
        smtp.fail_next(1)
        fake_api.set_balance(100.0, 95.0)

        assert cli("check").code == 1
        assert cli("status").code == 0
        assert cli("notify-test").code == 1
        assert webhook.messages == [] and len(webhook.requests) == 2
        webhook.set_failing(False)
        assert cli("check").code == 1  # the kept message is delivered now
        assert len(webhook.messages) == 1

        assert_secrets_were_used(fake_api, webhook, smtp)
        assert_no_secret(cli, tmp_path, webhook, smtp)


def test_notify_test_leaks_nothing(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        run_cli: RunCli) -> None:
    cfg = write_secret_settings(tmp_path, fake_api, webhook, smtp)
    cli = Witness(run_cli, cfg, webhook)

    assert cli("notify-test").code == 0
    assert cli("notify-test", "--channel", "email", debug=False).code == 0

    smtp.wait_for(2)
    assert_secrets_were_used(None, webhook, smtp)
    assert_no_secret(cli, tmp_path, webhook, smtp)


# --------------------------------------------------------------------------- config check


def test_config_check_redacts_every_channel_secret(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, smtp: SmtpServer,
        run_cli: RunCli) -> None:
    cfg = write_secret_settings(tmp_path, fake_api, webhook, smtp)
    cli = Witness(run_cli, cfg, webhook)

    result = cli("config", "check")

    assert result.code == 0, result
    assert "[[channels]]" in result.stdout and '"hook"' in result.stdout
    assert_no_secret(cli, tmp_path, webhook, smtp)
    assert fake_api.count == 0 and webhook.requests == []


# --------------------------------------------------------------------------- settings errors


SETTINGS_ERRORS = {
    # A realistic slip: the key itself where its variable's name belongs.
    "api_key_env": ('[openrouter]\nbase_url = "{base}"\napi_key_env = "${{OPENROUTER_API_KEY}}"\n',
                    "openrouter.api_key_env"),
    "timeout": ('[openrouter]\nbase_url = "{base}"\ntimeout = "${{OPENROUTER_API_KEY}}"\n',
                "openrouter.timeout"),
    "channel-url": ('[openrouter]\nbase_url = "{base}"\n[[channels]]\nname = "hook"\n'
                    'url = "${{BARE_TOKEN}}"\n', "channels[0].url"),
    "channel-scheme": ('[openrouter]\nbase_url = "{base}"\n[[channels]]\nname = "hook"\n'
                       'url = "nosuchservice://${{BARE_TOKEN}}@example.com/"\n',
                       "channels[0].url"),
    "below": ('[openrouter]\nbase_url = "{base}"\n[[rules]]\nname = "low"\n'
              'type = "threshold"\nbelow = "${{OPENROUTER_API_KEY}}"\n', "rules[0].below"),
    "rule-name": ('[openrouter]\nbase_url = "{base}"\n[[rules]]\n'
                  'name = "low ${{OPENROUTER_API_KEY}}"\ntype = "threshold"\nbelow = 1.0\n',
                  "rules[0].name"),
    # Values that are quoted when written in the file, but not when they come from ${VAR}.
    "rule-type": ('[openrouter]\nbase_url = "{base}"\n[[rules]]\nname = "low"\n'
                  'type = "${{BARE_TOKEN}}"\n', "rules[0].type"),
    "duplicate-channel": ('[openrouter]\nbase_url = "{base}"\n[[channels]]\nname = "${{BARE_TOKEN}}"\n'
                          'url = "json://127.0.0.1:9/x"\n[[channels]]\nname = "${{BARE_TOKEN}}"\n'
                          'url = "json://127.0.0.1:9/y"\n', "channels[1].name"),
    "undefined-channel": ('[openrouter]\nbase_url = "{base}"\n[[rules]]\nname = "low"\n'
                          'type = "threshold"\nbelow = 1.0\nchannels = ["${{BARE_TOKEN}}"]\n',
                          "rules[0].channels[0]"),
    # A URL from ${VAR} that apprise cannot load: neither its parts nor apprise's own
    # warnings about them reach the terminal.
    "channel-unknown": ('[openrouter]\nbase_url = "{base}"\n[[channels]]\nname = "hook"\n'
                        'url = "${{BARE_URL}}"\n', "channels[0].url"),
    "channel-malformed": ('[openrouter]\nbase_url = "{base}"\n[[channels]]\nname = "chat"\n'
                          'url = "slack://${{BARE_TOKEN}}/B000"\n', "channels[0].url"),
    "base-url-port": ('[openrouter]\nbase_url = "http://127.0.0.1:${{BARE_TOKEN}}/api/v1"\n',
                      "openrouter.base_url"),
}


@pytest.mark.parametrize("case", list(SETTINGS_ERRORS))
def test_settings_error_does_not_echo_a_secret(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, case: str) -> None:
    template, path = SETTINGS_ERRORS[case]
    body = template.format(base=fake_api.base_url)
    cfg = write_settings(tmp_path, body + f'[database]\nurl = "sqlite:///{tmp_path}/cw.db"\n')
    env = {"OPENROUTER_API_KEY": KEY, "BARE_TOKEN": "CANARY-BARE-TOKEN-2c3d4e",
           "BARE_URL": "nosuchservice://CANARY-BARE-URL-7a8b9c@example.com/"}

    result = run_cli("--log-level", "DEBUG", "check", config=cfg, env=env)

    assert result.code == 78, result
    assert path in result.stderr, result.stderr
    output = result.stdout + result.stderr
    assert MARKER not in output, f"a secret leaked: ...{_excerpt(output)}..."
    assert fake_api.count == 0
    assert not list(tmp_path.glob("cw.db*"))


DB_CASES = {
    # The driver's own message would quote the part it choked on.
    "port": ("postgresql+psycopg://cw@127.0.0.1:${BARE_TOKEN}/x", 78),
    "query-password": ("postgresql+psycopg://cw@127.0.0.1:1/x?password=${BARE_TOKEN}", 3),
    "userinfo-password": ("postgresql+psycopg://cw:${BARE_TOKEN}@127.0.0.1:1/x", 3),
    "sqlite": ("sqlite://cw:${BARE_TOKEN}@/x?password=${BARE_TOKEN}", 78),
}


@pytest.mark.parametrize("case", list(DB_CASES))
def test_a_database_url_error_does_not_echo_a_secret(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, case: str) -> None:
    url, code = DB_CASES[case]
    cfg = write_settings(tmp_path, f'[openrouter]\nbase_url = "{fake_api.base_url}"\n'
                                   f'[database]\nurl = "{url}"\n')
    env = {"OPENROUTER_API_KEY": KEY, "BARE_TOKEN": "CANARY-BARE-TOKEN-2c3d4e"}

    result = run_cli("--log-level", "DEBUG", "check", config=cfg, env=env, timeout=30)

    assert result.code == code, result
    assert "database" in result.stderr, result
    output = result.stdout + result.stderr
    assert MARKER not in output, f"a secret leaked: ...{_excerpt(output)}..."
    assert fake_api.count == 0


def every_setting_from_a_variable(tmp_path: Path, base_url: str) -> Path:
    """A settings file where every string setting is invalid and holds ${S}."""
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{base_url}"
        timeout = "${{S}}"
        [schedule]
        interval = "${{S}}"
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        keep_raw = "${{S}}"
        keep_rollups = "1${{S}}"
        [alerts]
        repeat_interval = "${{S}}"
        send_resolved = "${{S}}"
        [forecast]
        window = "${{S}}"
        [[channels]]
        name = "${{S}}"
        url = "json://127.0.0.1:9/x"
        [[channels]]
        name = "${{S}}"
        url = "${{S}}"
        [[rules]]
        name = "a"
        type = "${{S}}"
        [[rules]]
        name = "${{S}} x"
        type = "threshold"
        below = "${{S}}"
        severity = "${{S}}"
        channels = ["x${{S}}"]
        for = "${{S}}"
        [[rules]]
        name = "b"
        type = "burn_rate"
        window = "${{S}}"
        short_window = "${{S}}"
        above = "${{S}}"
        [[rules]]
        name = "c"
        type = "runway"
        window = "1h"
        below = "${{S}}"
        [[rules]]
        name = "d"
        type = "fetch_failure"
        consecutive = "${{S}}"
        """)


@pytest.mark.parametrize("command", [["check"], ["config", "check"]])
def test_no_settings_error_echoes_a_value_from_a_variable(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, command: list[str]) -> None:
    cfg = every_setting_from_a_variable(tmp_path, fake_api.base_url)

    result = run_cli(*command, config=cfg, env={"OPENROUTER_API_KEY": KEY, "S": "CANARY-VAR-4f5a6b"})

    assert result.code == 78, result
    lines = result.stderr.splitlines()
    assert len(lines) >= 20, lines  # every setting reported, all at once
    assert not [line for line in lines if MARKER in line], lines
    assert result.stdout == "" and fake_api.count == 0


# --------------------------------------------------------------------------- the API key


BAD_KEYS = {"non-ascii": KEY + "\u00e9", "space": KEY.replace("-", " ", 1), "newline": KEY + "\n",
            "nbsp": "\u00a0" + KEY, "control": KEY[:10] + "\x01" + KEY[10:],
            "zero-width": KEY + "\u200b"}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", list(BAD_KEYS))
def test_an_api_key_that_is_not_printable_ascii_is_one_line_exit_78(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, case: str, command: str) -> None:
    cfg = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "1s"
        [schedule]
        interval = "1s"
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        """)

    result = run_cli(command, config=cfg, env={"OPENROUTER_API_KEY": BAD_KEYS[case]}, timeout=30)

    assert result.code == 78, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("openrouter.api_key_env: "), result.stderr
    assert "OPENROUTER_API_KEY" in lines[0] and "printable ASCII" in lines[0]
    assert MARKER not in result.stdout + result.stderr
    assert fake_api.count == 0 and not list(tmp_path.glob("cw.db*"))
