"""Self-tests of the test doubles: each fault they script must really happen on the wire."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apprise
import pytest
import requests
from conftest import PG_ENV, RunCli, StartCli, cli_env, fresh_pg_database
from fakes import (
    CaptureServer,
    FakeOpenRouter,
    Resp,
    SmtpServer,
    WebhookReceiver,
    write_settings,
)

# --------------------------------------------------------------------------- OpenRouter


def test_default_answer_is_the_balance(fake_api: FakeOpenRouter) -> None:
    fake_api.set_balance(50.0, 12.5)
    before = time.monotonic()

    r = requests.get(f"{fake_api.base_url}/credits", headers={"Authorization": "Bearer k-1"},
                     timeout=2)

    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"data": {"total_credits": 50.0, "total_usage": 12.5}}
    [seen] = fake_api.requests
    assert (seen.method, seen.path) == ("GET", "/api/v1/credits")
    assert seen.headers["Authorization"] == "Bearer k-1"
    assert seen.header("authorization") == "Bearer k-1"
    assert before <= seen.at <= time.monotonic()
    assert fake_api.count == 1


def test_queue_is_fifo_then_falls_back_to_default(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp.status_only(429, headers={"Retry-After": "7"}),
                     Resp.html("<h1>portal</h1>"))

    first, second, third = (requests.get(fake_api.credits_url, timeout=2) for _ in range(3))

    assert (first.status_code, first.headers["Retry-After"], first.content) == (429, "7", b"")
    assert second.headers["Content-Type"].startswith("text/html")
    assert third.json()["data"]["total_credits"] == 100.0
    assert fake_api.pending == 0


def test_set_default_replaces_the_fallback(fake_api: FakeOpenRouter) -> None:
    fake_api.set_default(Resp.status_only(503))

    assert [requests.get(fake_api.credits_url, timeout=2).status_code for _ in range(2)] == [503,
                                                                                            503]


def test_json_helper_writes_non_finite_numbers_verbatim(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp.credits(float("nan"), float("inf")))

    assert requests.get(fake_api.credits_url, timeout=2).text == (
        '{"data": {"total_credits": NaN, "total_usage": Infinity}}')


def test_unknown_path_is_404_and_keeps_the_queue(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp.status_only(500))

    assert requests.get(f"{fake_api.origin}/api/v1/key", timeout=2).status_code == 404
    assert fake_api.pending == 1


def test_api_key_gate_answers_401_without_the_right_bearer() -> None:
    with FakeOpenRouter(api_key="sk-or-good") as api:
        wrong = requests.get(api.credits_url, headers={"Authorization": "Bearer bad"}, timeout=2)
        right = requests.get(api.credits_url, headers={"Authorization": "Bearer sk-or-good"},
                             timeout=2)

    assert (wrong.status_code, right.status_code) == (401, 200)


def test_concurrent_requests_each_consume_one_queued_answer(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(*(Resp.credits(float(i), 0.0) for i in range(20)))

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: requests.get(fake_api.credits_url, timeout=5).json(),
                               range(20)))

    assert sorted(b["data"]["total_credits"] for b in bodies) == [float(i) for i in range(20)]
    assert fake_api.count == 20


def test_trickle_outlasts_a_per_read_timeout(fake_api: FakeOpenRouter) -> None:
    # The requests trap the worker must defend against: 0.3 s per read never trips.
    fake_api.enqueue(Resp(body=b"x" * 16, trickle=0.05))
    start = time.monotonic()

    r = requests.get(fake_api.credits_url, timeout=0.3)

    assert r.content == b"x" * 16
    assert time.monotonic() - start >= 0.7


def test_delay_holds_back_the_status_line(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp(delay=0.3), Resp(delay=0.3))
    start = time.monotonic()

    assert requests.get(fake_api.credits_url, timeout=2).status_code == 200
    assert time.monotonic() - start >= 0.3
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(fake_api.credits_url, timeout=0.1)


def test_hang_never_answers_before_the_client_gives_up(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp(hang=True))
    start = time.monotonic()

    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(fake_api.credits_url, timeout=0.4)

    assert time.monotonic() - start >= 0.4
    assert fake_api.count == 1  # it was accepted and read, just never answered


def test_close_mid_body_breaks_the_response(fake_api: FakeOpenRouter) -> None:
    fake_api.enqueue(Resp.credits(100.0, 1.0, close_mid_body=True))

    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(fake_api.credits_url, timeout=2)


def test_stop_is_quick_while_handlers_hang_and_trickle() -> None:
    api = FakeOpenRouter().start()
    api.enqueue(Resp(hang=True), Resp(body=b"x" * 100, trickle=10.0))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            requests.get(api.credits_url, timeout=5)
        except requests.RequestException as exc:
            errors.append(exc)

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    api.wait_for_requests(2, timeout=2)
    start = time.monotonic()
    api.stop()

    assert time.monotonic() - start < 1.0
    for thread in clients:
        thread.join(2)
    assert len(errors) == 2  # both clients saw the connection end without an answer


def test_redirect_to_another_origin(fake_api: FakeOpenRouter,
                                    capture_server: CaptureServer) -> None:
    fake_api.enqueue(Resp.redirect(capture_server.url), Resp.redirect(capture_server.url, 307))
    auth = {"Authorization": "Bearer sk-or-secret"}

    followed = requests.get(fake_api.credits_url, headers=auth, timeout=2)
    refused = requests.get(fake_api.credits_url, headers=auth, timeout=2, allow_redirects=False)

    assert followed.json()["data"]["total_credits"] == 100.0  # a follower "succeeds"
    assert (refused.status_code, refused.headers["Location"]) == (307, capture_server.url)
    assert capture_server.count == 1
    # requests itself strips Authorization when the port changes.
    assert capture_server.authorization_headers == [None]


# --------------------------------------------------------------------------- webhooks


def _notify(url: str, body: str = "b", title: str = "t", kind: str = "warning") -> bool:
    sender = apprise.Apprise()
    assert sender.add(url), url
    return bool(sender.notify(body=body, title=title, notify_type=kind))


def test_apprise_json_reaches_the_receiver(webhook: WebhookReceiver) -> None:
    assert _notify(webhook.apprise_url(), body="remaining $1.00", title="low-balance")

    [message] = webhook.wait_for(1)
    assert message == {"version": "1.0", "title": "low-balance", "message": "remaining $1.00",
                       "attachments": [], "type": "warning"}
    [seen] = webhook.requests
    assert (seen.method, seen.path) == ("POST", "/hook")
    assert seen.header("Content-Type") == "application/json"


def test_failures_make_apprise_notify_falsy(webhook: WebhookReceiver) -> None:
    url = webhook.apprise_url("alerts")
    webhook.fail_next(1)
    assert not _notify(url)
    assert _notify(url)

    webhook.set_failing(True, status=503)
    assert not _notify(url)
    webhook.set_failing(False)
    assert _notify(url)

    assert len(webhook.messages) == 2
    assert webhook.count == 4


def test_hang_times_out_apprise_but_the_message_still_lands(webhook: WebhookReceiver) -> None:
    # The at-least-once case: the sender saw a failure, the receiver took the message.
    webhook.set_hang(0.6)
    start = time.monotonic()

    assert not _notify(f"{webhook.apprise_url()}?rto=0.2")

    assert time.monotonic() - start < 0.6
    assert len(webhook.wait_for(1, timeout=2)) == 1


def test_wait_for_times_out_with_a_count(webhook: WebhookReceiver) -> None:
    with pytest.raises(TimeoutError, match="expected 1 webhook messages, got 0"):
        webhook.wait_for(1, timeout=0.05)


# --------------------------------------------------------------------------- SMTP


def test_apprise_mailto_delivers_plain_text(smtp: SmtpServer) -> None:
    assert _notify(smtp.apprise_url("ops@example.com"), body="line one\nline two",
                   title="fetch-failing", kind="failure")

    [mail] = smtp.wait_for(1)
    assert (mail.subject, mail.body) == ("fetch-failing", "line one\nline two")
    assert (mail.from_, mail.to) == ("creditwatch@example.com", "ops@example.com")
    assert mail.envelope_to == ("ops@example.com",)
    assert b"Content-Type: text/plain" in mail.raw and mail.login is None


def test_apprise_mailto_logs_in_over_plain_text(smtp: SmtpServer) -> None:
    url = smtp.apprise_url(user="user", password="CANARYTOKEN")
    assert url.startswith(f"mailto://user:CANARYTOKEN@127.0.0.1:{smtp.port}?")

    assert _notify(url)

    assert smtp.logins == [("user", "CANARYTOKEN")]
    assert smtp.wait_for(1)[0].login == "user"


def test_minimal_mailto_form_also_works(smtp: SmtpServer) -> None:
    # mailto:// defaults to mode=insecure and the host as SMTP server; from= is
    # still needed because "user@127.0.0.1" is not a valid sender address.
    port = smtp.port
    assert _notify(f"mailto://u:pw@127.0.0.1:{port}?from=cw@example.com&to=a@example.com"
                   "&format=text")
    assert not apprise.Apprise().add(f"mailto://u:pw@127.0.0.1:{port}?to=a@example.com")

    assert smtp.wait_for(1)[0].to == "a@example.com"


def test_smtp_refusal_makes_notify_falsy(smtp: SmtpServer) -> None:
    smtp.fail_next(1)

    assert not _notify(smtp.apprise_url())
    assert _notify(smtp.apprise_url())
    assert len(smtp.messages) == 1


# --------------------------------------------------------------------------- fixtures


def test_write_settings_dedents(tmp_path: Path) -> None:
    path = write_settings(tmp_path, """
        [schedule]
        interval = "1s"
    """)

    assert path == tmp_path / "settings.toml"
    assert path.read_text() == '[schedule]\ninterval = "1s"\n'


def test_cli_env_drops_our_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "real-key")
    monkeypatch.setenv("CREDITWATCH_CONFIG", "/etc/cw.toml")
    monkeypatch.setenv("KEEP_ME", "1")

    env = cli_env({"EXTRA": "x", "KEEP_ME": None})

    assert "OPENROUTER_API_KEY" not in env and "CREDITWATCH_CONFIG" not in env
    assert env["EXTRA"] == "x" and "KEEP_ME" not in env


@pytest.fixture
def stub_worker(tmp_path: Path) -> dict[str, str]:
    """A stand-in `worker` package, so the CLI fixtures are tested without the real one."""
    package = tmp_path / "stub" / "worker"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent("""
        import json, os, signal, sys, time
        if sys.argv[-1] == "run":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            print("running", flush=True)
            time.sleep(30)
        print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                          "key": os.environ.get("OPENROUTER_API_KEY")}))
        print("to stderr", file=sys.stderr)
        sys.exit(int(os.environ.get("STUB_EXIT", "0")))
    """))
    return {"PYTHONPATH": str(tmp_path / "stub")}


def test_run_cli_runs_python_m_worker(run_cli: RunCli, stub_worker: dict[str, str],
                                      tmp_path: Path) -> None:
    result = run_cli("check", config=tmp_path / "s.toml",
                     env=stub_worker | {"STUB_EXIT": "2", "OPENROUTER_API_KEY": "sk"})

    assert result.code == 2 and result.stderr == "to stderr\n"
    assert json.loads(result.stdout) == {"argv": ["--config", str(tmp_path / "s.toml"), "check"],
                                         "cwd": str(tmp_path), "key": "sk"}


def test_start_cli_stops_on_sigterm(start_cli: StartCli, stub_worker: dict[str, str]) -> None:
    proc = start_cli("run", env=stub_worker)
    deadline = time.monotonic() + 5
    while "running" not in proc.output()[0] and time.monotonic() < deadline:
        time.sleep(0.02)

    result = proc.stop()

    assert (result.code, result.stdout) == (0, "running\n")


def test_sqlite_url(sqlite_url: str, tmp_path: Path) -> None:
    assert sqlite_url == f"sqlite:///{tmp_path}/cw.db"


def test_db_url_covers_both_engines(db_url: str) -> None:
    assert db_url.startswith(("sqlite:///", "postgresql+psycopg://"))


@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"{PG_ENV} is not set")
def test_fresh_pg_database_is_created_and_dropped() -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    databases = fresh_pg_database(os.environ[PG_ENV])
    url = make_url(next(databases))
    assert url.database is not None and url.database.startswith("cw_")
    session = psycopg.connect(url.set(drivername="postgresql")
                              .render_as_string(hide_password=False))
    session.execute("CREATE TABLE t (x int)")  # an open session the drop must force out

    databases.close()  # runs the fixture's teardown

    session.close()
    admin_url = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin_url.render_as_string(hide_password=False)) as admin:
        row = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (url.database,)).fetchone()
    assert row is None
