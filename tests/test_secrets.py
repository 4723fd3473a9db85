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
}


@pytest.mark.parametrize("case", list(SETTINGS_ERRORS))
def test_settings_error_does_not_echo_a_secret(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, case: str) -> None:
    template, path = SETTINGS_ERRORS[case]
    body = template.format(base=fake_api.base_url)
    cfg = write_settings(tmp_path, body + f'[database]\nurl = "sqlite:///{tmp_path}/cw.db"\n')
    env = {"OPENROUTER_API_KEY": KEY, "BARE_TOKEN": "CANARY-BARE-TOKEN-2c3d4e"}

    result = run_cli("--log-level", "DEBUG", "check", config=cfg, env=env)

    assert result.code == 78, result
    assert path in result.stderr, result.stderr
    output = result.stdout + result.stderr
    assert MARKER not in output, f"a secret leaked: ...{_excerpt(output)}..."
    assert fake_api.count == 0
    assert not list(tmp_path.glob("cw.db*"))
