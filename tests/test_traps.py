"""One test per "Known trap in our dependencies" (DESIGN.md) not covered elsewhere.

Already covered, so not repeated here: requests' timeouts, redirects, netrc and
proxies, and Retry-After (test_openrouter.py); NaN, Infinity, 1e309 and
booleans in API bodies (test_openrouter.py, test_fuzz_inputs.py); pydantic
errors echoing a secret, at the parse_settings level (test_settings.py);
replicas migrating one database at once on PostgreSQL and SQLite
(test_migrations.py); idempotency keys in messages (test_messages.py); apprise's
own retries staying off (test_delivery.py); a hanging tick and shutdown
without a timeout (the fault tests for kill and hang).
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apprise
import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.memory import MemoryJobStore
from conftest import RunCli
from fakes import FakeOpenRouter, WebhookReceiver, write_settings
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

import worker.service
from worker import commands, db, logs, store
from worker.app import App, build
from worker.delivery import Failed, Sender
from worker.domain import FetchKind, FetchOutcome
from worker.redact import Redactor
from worker.tick import Deps, run_tick

KEY = "sk-or-v1-traps-0006"
CANARY = "CANARY-trap-5e1f0c"
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
# Slack's three webhook tokens, in the shapes apprise's Slack plugin accepts.
SLACK_TOKENS = ("T0CANARYA", "B0CANARYB", "cwSlackCanaryTokenC0123456")
SLACK_URL = "slack://{}/{}/{}".format(*SLACK_TOKENS)



# --------------------------------------------------------------------------- APScheduler


def _running_scheduler() -> worker.service._Scheduler:
    # serve() keeps its scheduler to itself; find the one it started, without patching it.
    found = [o for o in gc.get_objects()
             if isinstance(o, worker.service._Scheduler) and o.running]
    assert len(found) == 1, found
    return found[0]


def test_a_tick_that_starts_late_still_runs() -> None:
    """misfire_grace_time defaults to 1 s: serve() must set it, or a late tick is skipped.

    serve() runs for real in this (main) thread, signal handlers included. A helper
    thread makes the scheduler start a tick 1.5 s after its due time, as a busy
    machine or a stopped process would, and watches what APScheduler does with it.
    """
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    ticks: list[float] = []
    events: list[JobExecutionEvent] = []
    seen: dict[str, Any] = {}
    done = threading.Event()

    def late_run(scheduler: worker.service._Scheduler, **changes: Any) -> JobExecutionEvent:
        due = datetime.now(UTC) - timedelta(seconds=1.5)
        count = len(events)
        scheduler.modify_job(worker.service.JOB_ID, next_run_time=due, **changes)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            mine = [e for e in events[count:] if e.scheduled_run_time == due]
            if mine:
                return mine[0]
            time.sleep(0.02)
        raise AssertionError(f"APScheduler did nothing with the late run: {events}")

    def drive() -> None:
        try:
            deadline = time.monotonic() + 5
            while not ticks and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # the first tick has run and released its job instance
            scheduler = _running_scheduler()
            job = scheduler.get_job(worker.service.JOB_ID)
            seen["grace"] = job.misfire_grace_time
            seen["stores"] = [type(s) for s in scheduler._jobstores.values()]
            scheduler.add_listener(events.append, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
            seen["late"] = late_run(scheduler)
            # Control: with APScheduler's default grace the very same late run is dropped.
            seen["default"] = late_run(scheduler, misfire_grace_time=1)
            scheduler.request_stop()
        finally:
            done.set()

    helper = threading.Thread(target=drive, daemon=True)
    helper.start()
    try:
        code = worker.service.serve(lambda: ticks.append(time.monotonic()), timedelta(seconds=10),
                                    stop_budget=5)
    except ValueError as err:  # signal handlers need the main thread
        pytest.skip(f"serve() cannot install its signal handlers here: {err}")
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert done.wait(5)

    assert code == 0
    assert seen["grace"] == 5, "misfire_grace_time is not half the interval"
    assert seen["stores"] == [MemoryJobStore], "the job store must be the in-memory one"
    assert seen["late"].code == EVENT_JOB_EXECUTED
    assert seen["default"].code == EVENT_JOB_MISSED
    assert len(ticks) == 2  # the first tick, and the late one; the control never ran


# --------------------------------------------------------------------------- apprise


def channel_settings(tmp_path: Path, url: str) -> Path:
    return write_settings(tmp_path, f"""
        [database]
        url = "sqlite:///{tmp_path}/cw.db"
        [[channels]]
        name = "chat"
        url = "{url}"
        """)


def test_slack_tokens_never_printed_at_debug(tmp_path: Path, run_cli: RunCli) -> None:
    """apprise's Slack plugin logs its whole POST URL, tokens included, at DEBUG.

    There is no internet here, so the send fails: the failure path is the one
    most likely to print a URL.
    """
    config = channel_settings(tmp_path, SLACK_URL)

    result = run_cli("--log-level", "DEBUG", "notify-test", config=config, timeout=60)

    assert result.code == 1, result
    assert result.stdout.startswith("chat: FAILED"), result
    # apprise runs in the sender child: its own lines (the plugin's DEBUG ones, the
    # control below shows, would carry the tokens) never reach the terminal; its last
    # warning travels in the failure reason, redacted.
    assert "apprise" not in result.stderr, result.stderr
    assert "did not accept" in result.stdout, result.stdout
    for token in SLACK_TOKENS:
        assert token not in result.stdout + result.stderr, token
    assert "Traceback" not in result.stderr


def test_the_slack_plugin_does_log_its_tokens_when_uncapped(
        caplog: pytest.LogCaptureFixture) -> None:
    """The control for the test above: the trap is real in this apprise version."""
    caplog.set_level(logging.DEBUG, logger="apprise")
    client = apprise.Apprise()
    assert client.add(SLACK_URL)

    assert not client.notify(body="b", title="t")

    assert any(SLACK_TOKENS[2] in r.getMessage() for r in caplog.records
               if r.levelno == logging.DEBUG and r.name.startswith("apprise")), caplog.text


def test_apprise_logs_never_reach_the_terminal_even_at_debug(
        tmp_path: Path, run_cli: RunCli, webhook: WebhookReceiver) -> None:
    url = webhook.apprise_url().replace("json://", f"json://ops:{CANARY}@")
    config = channel_settings(tmp_path, url)

    result = run_cli("--log-level", "DEBUG", "notify-test", config=config)

    assert result.code == 0, result
    assert len(webhook.messages) == 1
    lines = result.stderr.splitlines()
    assert not [line for line in lines if " apprise" in line], result.stderr  # not even INFO
    assert "JSON POST URL" not in result.stderr  # apprise's own DEBUG line
    assert CANARY not in result.stdout + result.stderr


def test_logs_setup_caps_apprise_whatever_the_level(restore_logging: None) -> None:
    for level in ("DEBUG", "INFO", "WARNING", "ERROR"):
        logs.setup(level, Redactor())
        effective = logging.getLogger("apprise").getEffectiveLevel()
        assert effective >= max(logging.INFO, logging.getLevelName(level)), (level, effective)


def test_a_failed_notify_is_a_falsy_result_not_none(webhook: WebhookReceiver) -> None:
    """apprise 2.x returns an AppriseResult: `is None` says success on a failure."""
    webhook.set_failing(True, status=503)
    client = apprise.Apprise()
    client.add(webhook.apprise_url())

    result = client.notify(body="b", title="t")

    assert result is not None and result is not False  # an `is None`/`is False` test passes it
    assert not result
    sender = Sender("chat", webhook.apprise_url(), send_timeout=5)
    try:
        sent = sender.send(1, "t", "b", "info")
    finally:
        sender.close()
    assert isinstance(sent, Failed)
    assert webhook.messages == []


# --------------------------------------------------------------------------- pydantic


def test_a_secret_in_a_field_that_fails_validation_never_reaches_the_terminal(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli) -> None:
    config = write_settings(tmp_path, textwrap.dedent(f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        [schedule]
        interval = "${{CW_TRAP_SECRET}}"
        [database]
        url = "${{CW_TRAP_SECRET}}"
        [alerts]
        send_resolved = "${{CW_TRAP_SECRET}}"
        [[channels]]
        name = "chat"
        url = "${{CW_TRAP_SECRET}}"
        [[rules]]
        name = "low"
        type = "threshold"
        below = "${{CW_TRAP_SECRET}}"
        severity = "${{CW_TRAP_SECRET}}"
        """))
    env = {"CW_TRAP_SECRET": CANARY, "OPENROUTER_API_KEY": KEY}

    for command in (["config", "check"], ["check"]):
        result = run_cli("--log-level", "DEBUG", *command, config=config, env=env)
        assert result.code == 78, result
        lines = result.stderr.splitlines()
        assert len(lines) == 6, lines  # every field named once
        assert CANARY not in result.stdout + result.stderr, result
        assert "trap-5e1f0c" not in result.stderr
    assert fake_api.count == 0


# --------------------------------------------------------------------------- SQLAlchemy


def test_bound_values_stay_out_of_database_errors_and_logs(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    engine = db.make_engine(db_url)
    plain = create_engine(db_url)  # the control: SQLAlchemy's default shows them
    try:
        statement = text("INSERT INTO no_such_table (v) VALUES (:v)")
        with pytest.raises(SQLAlchemyError) as ours, engine.begin() as conn:
            conn.execute(statement, {"v": CANARY})
        with pytest.raises(SQLAlchemyError) as theirs, plain.begin() as conn:
            conn.execute(statement, {"v": CANARY})
        assert CANARY in str(theirs.value), "the control shows no parameters: test proves nothing"
        assert CANARY not in str(ours.value)
        assert "hide_parameters=True" in str(ours.value)

        caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
        with engine.connect() as conn:
            conn.execute(text("SELECT :v"), {"v": CANARY})
        assert any("SELECT" in r.getMessage() for r in caplog.records), "statement logging was off"
        assert CANARY not in caplog.text
    finally:
        engine.dispose()
        plain.dispose()


# --------------------------------------------------------------------------- SQLite


OK = FetchOutcome(FetchKind.OK, total_credits=100.0, total_usage=1.0)


def deferred_engine(url: str) -> Engine:
    """db.make_engine's SQLite set-up, except that BEGIN is the default DEFERRED one."""
    engine = create_engine(url, hide_parameters=True)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute(f"PRAGMA busy_timeout = {db.SQLITE_BUSY_MS}")
        dbapi_connection.execute("PRAGMA journal_mode = WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN DEFERRED")

    return engine


@pytest.fixture
def migrated_sqlite(sqlite_url: str) -> Iterator[str]:
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    engine.dispose()
    yield sqlite_url


def test_control_a_deferred_read_then_write_fails_under_a_concurrent_writer(
        migrated_sqlite: str) -> None:
    """Deterministic: the reader's snapshot is stale when it wants to write, and SQLite
    answers SQLITE_BUSY at once; busy_timeout cannot help."""
    reader_engine, writer_engine = deferred_engine(migrated_sqlite), db.make_engine(migrated_sqlite)
    try:
        with store.sessions(reader_engine)() as reader:
            reader.begin()
            store.last_fetch(reader, "default")  # read: the transaction now holds a snapshot
            with store.tick_transaction(store.sessions(writer_engine)) as writer:
                store.record_fetch(writer, "default", T0, OK)  # another process writes and commits
            store.record_fetch(reader, "default", T0 + timedelta(minutes=1), OK)
            started = time.monotonic()
            with pytest.raises(OperationalError, match="database is locked"):
                reader.flush()
            assert time.monotonic() - started < db.SQLITE_BUSY_MS / 1000 / 2
            reader.rollback()
    finally:
        reader_engine.dispose()
        writer_engine.dispose()


def test_begin_immediate_makes_the_same_interleaving_wait_instead(migrated_sqlite: str) -> None:
    reader_engine, writer_engine = db.make_engine(migrated_sqlite), db.make_engine(migrated_sqlite)
    read_done, errors = threading.Event(), []

    def writer() -> None:
        read_done.wait(5)
        try:
            with store.tick_transaction(store.sessions(writer_engine)) as session:
                store.record_fetch(session, "default", T0, OK)
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with store.tick_transaction(store.sessions(reader_engine)) as reader:
            store.last_fetch(reader, "default")
            read_done.set()
            time.sleep(0.3)  # the writer is blocked on BEGIN IMMEDIATE meanwhile
            store.record_fetch(reader, "default", T0 + timedelta(minutes=1), OK)
        thread.join(10)
        assert errors == []
        with reader_engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM readings")).scalar() == 2
    finally:
        reader_engine.dispose()
        writer_engine.dispose()


def tick_together(tmp_path: Path, db_url: str, api: FakeOpenRouter, hook: WebhookReceiver,
                  engine: Callable[[str], Engine], rounds: int = 20,
                  ) -> tuple[list[BaseException], int]:
    """Two replicas (two engines, two Deps) tick at the same instant `rounds` times.

    Returns the errors the ticks raised and the readings stored.
    """
    config = write_settings(tmp_path, textwrap.dedent(f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "2s"
        [database]
        url = "{db_url}"
        [[channels]]
        name = "hook"
        url = "{hook.apprise_url()}"
        [[rules]]
        name = "low"
        type = "threshold"
        below = 50.0
        """))
    env = {"OPENROUTER_API_KEY": KEY}
    api.set_balance(100.0, 60.0)  # low fires at the first tick
    replicas: list[tuple[App, Deps]] = []
    for _ in range(2):
        args = argparse.Namespace(config=str(config), log_level="CRITICAL")
        checked = commands.load(args, env, need_key=True)
        checked.close()
        loaded = build(checked.settings, env, redact=checked.redact, engine=engine(db_url), need_key=True)
        loaded.migrate()
        replicas.append((loaded, loaded.deps))
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def replica(deps: Deps) -> None:
        for i in range(rounds):
            barrier.wait(10)
            try:
                run_tick(deps, T0 + timedelta(minutes=i))
            except Exception as err:  # noqa: BLE001 - collected and asserted on
                errors.append(err)

    threads = [threading.Thread(target=replica, args=(deps,)) for _, deps in replicas]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with replicas[0][0].engine.connect() as conn:
            readings = int(conn.execute(text("SELECT count(*) FROM readings")).scalar() or 0)
    finally:
        for loaded, deps in replicas:
            deps.http.close()
            loaded.engine.dispose()
    return errors, readings


def test_two_replicas_ticking_the_same_database_at_once(
        tmp_path: Path, db_url: str, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        restore_logging: None) -> None:
    """No 'database is locked' on SQLite (BEGIN IMMEDIATE + busy_timeout), and on
    either database no duplicate notification."""
    errors, readings = tick_together(tmp_path, db_url, fake_api, webhook, db.make_engine)

    assert errors == [], [str(e).splitlines()[0] for e in errors]
    assert readings == 40
    assert len(webhook.messages) == 1, webhook.messages


def test_control_deferred_transactions_ticking_at_once_hit_sqlite_busy(
        tmp_path: Path, sqlite_url: str, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        restore_logging: None) -> None:
    """The same two replicas on an engine whose BEGIN is DEFERRED: ticks fail with
    'database is locked' despite busy_timeout (in practice many of the 40 do)."""
    errors, readings = tick_together(tmp_path, sqlite_url, fake_api, webhook, deferred_engine)

    assert errors, "no SQLITE_BUSY at all: the control shows nothing this time"
    assert all("database is locked" in str(e) for e in errors), errors
    assert readings == 40 - len(errors)
