"""The database is bounded on the client side (CONTRACT: "The database is bounded too").

(a) A private PostgreSQL cluster frozen with SIGSTOP (postmaster and every backend:
the kernel still accepts and ACKs, so no server-side or TCP timeout ever fires):
every kind of database call fails within `database.timeout`, in-process and
through the real CLI, and `run` recovers by itself after SIGCONT.
(b) A call that runs past the bound on a live database (SQLite, the machine's
PostgreSQL) is abandoned with the same message, and the engine goes on working.
(c) A SQLite file deleted or replaced under a running engine fails with a message
saying so, and is never silently created anew.
(d) A password anywhere in the database URL is masked (worker.redact registers the same
values with the log redactor).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from conftest import RunCli, StartCli
from fakes import FakeOpenRouter, write_settings
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from test_faults_db import PG_BIN, _Cluster  # the private-cluster helper, shared

from worker import db

KEY = "sk-or-v1-faults-dbfreeze-0001"
ENV = {"OPENROUTER_API_KEY": KEY}
TIMEOUT = 2.0
# Load slack on a busy 2-core machine: the promise is `TIMEOUT`, the test allows this much more.
SLACK = 3.0
TICK_FAILED = "tick failed, will retry at the next one"
NOT_ANSWERED = f"the database did not answer within {TIMEOUT:g}s (timed out on the client side"
def _elapsed(since: float) -> float:
    return time.monotonic() - since


def _wait(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step)
    return value


# --------------------------------------------------------------------------- a frozen cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[_Cluster]:
    """One private cluster for the module (initdb costs seconds); each test thaws it."""
    if os.geteuid() != 0:
        pytest.skip("a private PostgreSQL cluster needs root (to run initdb as user postgres)")
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 binaries missing in {PG_BIN}")
    made = _Cluster()
    try:
        made.start()
        yield made
    finally:
        _thaw(made)
        if made.running():
            made.stop()
        made.remove()


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def _postmaster(made: _Cluster) -> int:
    return int((made.data / "postmaster.pid").read_text().split()[0])


def _thaw(made: _Cluster) -> None:
    with suppress(OSError, ValueError):
        postmaster = _postmaster(made)
        for pid in [postmaster, *_children(postmaster)]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextmanager
def frozen(made: _Cluster) -> Iterator[None]:
    """SIGSTOP the postmaster (first: it forks no backend after that) and every backend."""
    postmaster = _postmaster(made)
    os.kill(postmaster, signal.SIGSTOP)
    try:
        for pid in _children(postmaster):
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        _thaw(made)


@pytest.fixture
def pg_engine(cluster: _Cluster) -> Iterator[Engine]:
    engine = db.make_engine(cluster.url, timeout=TIMEOUT)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS probe (n int)"))
    yield engine
    engine.dispose()


def _fails_in_time(call: Callable[[], Any]) -> tuple[float, str]:
    started = time.monotonic()
    with pytest.raises(OperationalError) as caught:
        call()
    return _elapsed(started), db.first_line(caught.value)


def _pooled(engine: Engine, made: _Cluster) -> tuple[float, str]:
    with Session(engine) as session:
        session.execute(text("SELECT 1"))  # a connection waits in the pool, pre-pinged next time
    with frozen(made), Session(engine) as session:
        return _fails_in_time(lambda: session.execute(text("SELECT 1")))


def _mid_transaction(engine: Engine, made: _Cluster) -> tuple[float, str]:
    with Session(engine) as session:
        session.execute(text("INSERT INTO probe VALUES (1)"))
        with frozen(made):
            return _fails_in_time(lambda: session.execute(text("SELECT count(*) FROM probe")))


def _commit(engine: Engine, made: _Cluster) -> tuple[float, str]:
    with Session(engine) as session:
        session.execute(text("INSERT INTO probe VALUES (2)"))
        with frozen(made):
            return _fails_in_time(session.commit)


def _new_connection(engine: Engine, made: _Cluster) -> tuple[float, str]:
    engine.dispose()  # nothing pooled: the session has to connect
    with frozen(made), Session(engine) as session:
        return _fails_in_time(lambda: session.execute(text("SELECT 1")))


@pytest.mark.slow
@pytest.mark.parametrize("phase", [_pooled, _mid_transaction, _commit, _new_connection],
                         ids=["pooled", "mid-transaction", "commit", "new-connection"])
def test_a_frozen_server_fails_every_kind_of_call_within_the_timeout(
        cluster: _Cluster, pg_engine: Engine,
        phase: Callable[[Engine, _Cluster], tuple[float, str]]) -> None:
    seconds, message = phase(pg_engine, cluster)
    assert message.startswith(NOT_ANSWERED), message
    assert seconds < TIMEOUT + SLACK, seconds
    # Thawed, the same engine answers again by itself (a new connection).
    with Session(pg_engine) as session:
        assert session.execute(text("SELECT 1")).scalar() == 1
    print(f"\nfrozen PostgreSQL, {phase.__name__.strip('_')}: failed after {seconds:.2f}s: {message}")


def _cluster_settings(tmp_path: Path, api: FakeOpenRouter, url: str) -> Path:
    return write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "1s"

        [schedule]
        interval = "1s"

        [database]
        url = "{url}"
        timeout = "{TIMEOUT:g}s"
    """)


@pytest.mark.slow
def test_check_against_a_frozen_server_exits_3_within_the_timeout(
        tmp_path: Path, fake_api: FakeOpenRouter, run_cli: RunCli, cluster: _Cluster) -> None:
    cfg = _cluster_settings(tmp_path, fake_api, cluster.url)
    fake_api.set_balance(100.0, 20.0)
    assert run_cli("db", "upgrade", config=cfg, env=ENV).code == 0
    with frozen(cluster):
        started = time.monotonic()
        done = run_cli("check", config=cfg, env=ENV, timeout=60)
        seconds = _elapsed(started)
    lines = done.stderr.splitlines()
    assert done.code == 3, done
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert NOT_ANSWERED in lines[0] and "database postgresql+psycopg://" in lines[0], lines
    # Start-up (Python, settings) comes on top of the database's own bound.
    assert seconds < TIMEOUT + SLACK + 2, seconds
    print(f"\ncheck against a frozen PostgreSQL: exit 3 after {seconds:.2f}s: {lines[0]}")


@pytest.mark.slow
def test_run_against_a_frozen_server_fails_ticks_in_time_and_recovers(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli, cluster: _Cluster) -> None:
    cfg = _cluster_settings(tmp_path, fake_api, cluster.url)
    fake_api.set_balance(100.0, 20.0)
    proc = start_cli("run", config=cfg, env=ENV)

    def lines() -> list[str]:
        return proc.output()[1].splitlines()

    def ticks() -> list[str]:
        return [line for line in lines() if "creditwatch: tick fetch=" in line]

    _wait(lambda: len(ticks()) >= 2, 20, "two ticks")
    before = len(lines())
    with frozen(cluster):
        started = time.monotonic()
        first = _wait(lambda: [x for x in lines()[before:] if TICK_FAILED in x],
                      TIMEOUT + SLACK + 1, "a failed tick")
        seconds = _elapsed(started)
        _wait(lambda: len([x for x in lines()[before:] if TICK_FAILED in x]) >= 2,
              2 * TIMEOUT + SLACK + 1, "a second failed tick: the service keeps ticking")
        assert proc.poll() is None, proc.output()
    good = len(ticks())
    _wait(lambda: len(ticks()) > good, 10, "a good tick after SIGCONT")

    done = proc.stop(signal.SIGTERM, timeout=30)
    assert done.code == 0 and "Traceback" not in done.stderr, done.stderr
    failed = [x for x in done.stderr.splitlines() if TICK_FAILED in x]
    assert all(NOT_ANSWERED in x and " ERROR creditwatch: " in x for x in failed), failed
    # One line per failed tick, nothing else: no driver or pool chatter.
    noise = [x for x in done.stderr.splitlines()
             if (" WARNING " in x or " ERROR " in x) and TICK_FAILED not in x]
    assert not noise, noise
    print(f"\nrun against a frozen PostgreSQL: first failed tick {seconds:.2f}s after the freeze: "
          f"{first[0].split(': ', 1)[1]}")


# --------------------------------------------------------------------------- a call past the bound


RUNAWAY = {
    # Counts for ever; only an interrupt stops it.
    "sqlite": ["WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"],
    # The server-side statement_timeout is lifted for this session: the client alone must cut it.
    "postgresql": ["SET statement_timeout = 0", "SELECT pg_sleep(10)"],
}


def test_a_call_running_past_the_timeout_is_abandoned_and_the_engine_goes_on(db_url: str) -> None:
    engine = db.make_engine(db_url, timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError) as caught, engine.connect() as conn:
            for statement in RUNAWAY[engine.dialect.name]:
                conn.exec_driver_sql(statement)
        seconds = _elapsed(started)
        message = db.first_line(caught.value)
        assert message == "the database did not answer within 1s (timed out on the client side)"
        assert seconds < 1.0 + SLACK, seconds
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_the_server_and_lock_bounds_follow_the_timeout(db_url: str) -> None:
    engine = db.make_engine(db_url, timeout=TIMEOUT)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1000
                return
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1s"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "1s"
            driver: Any = conn.connection.dbapi_connection
            params = driver.info.get_parameters()
        expected = {"connect_timeout": "2", "keepalives": "1", "keepalives_idle": "1",
                    "keepalives_interval": "1", "keepalives_count": "3", "tcp_user_timeout": "2000"}
        assert {k: params.get(k) for k in expected} == expected, params
    finally:
        engine.dispose()


def test_pg_connect_args_keep_the_urls_own_options() -> None:
    args = db.pg_connect_args(10.0, "-c search_path=cw")
    assert args["options"] == "-c statement_timeout=9000 -c lock_timeout=9000 -c search_path=cw"
    assert (args["connect_timeout"], args["keepalives_idle"], args["keepalives_interval"]) == (10, 5, 2)
    assert db.SQLITE_BUSY_MS == db.inner_bound_ms(db.DEFAULT_TIMEOUT) == 9000


# --------------------------------------------------------------------------- a deleted SQLite file


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'cw.db'}")
    db.upgrade(engine)
    yield engine
    engine.dispose()


def test_a_deleted_sqlite_file_fails_with_a_message_and_is_not_created_anew(
        tmp_path: Path, sqlite_engine: Engine) -> None:
    path = tmp_path / "cw.db"
    with Session(sqlite_engine) as session:
        session.execute(text("SELECT count(*) FROM readings"))  # a handle waits in the pool
    db.check_sqlite_file(sqlite_engine)
    path.unlink()

    deleted = (f"the SQLite file {path} was deleted while creditwatch was running; "
               "restore it and restart creditwatch, or restart to start a new history")
    with pytest.raises(OperationalError) as checked:
        db.check_sqlite_file(sqlite_engine)
    assert db.first_line(checked.value) == deleted
    # The pooled handle still reaches the unlinked inode: a checkout must refuse it.
    with pytest.raises(OperationalError) as pooled, Session(sqlite_engine) as session:
        session.execute(text("SELECT count(*) FROM readings"))
    assert db.first_line(pooled.value) == deleted
    # Nothing pooled any more: a new connection must not create an empty database.
    sqlite_engine.dispose()
    with pytest.raises(OperationalError) as fresh, sqlite_engine.connect():
        pass
    assert db.first_line(fresh.value) == deleted
    assert not path.exists()


def test_a_replaced_sqlite_file_fails_until_restart(tmp_path: Path, sqlite_engine: Engine) -> None:
    path = tmp_path / "cw.db"
    with Session(sqlite_engine) as session:
        session.execute(text("SELECT 1"))
    other = tmp_path / "restored.db"
    sqlite3.connect(other).close()
    other.replace(path)
    with pytest.raises(OperationalError) as caught, Session(sqlite_engine) as session:
        session.execute(text("SELECT 1"))
    assert db.first_line(caught.value) == (
        f"the SQLite file {path} was replaced by another file while creditwatch was running; "
        "restart creditwatch to use it")


def test_create_false_never_creates_a_sqlite_file_and_create_true_does(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    engine = db.make_engine(f"sqlite:///{missing}", create=False)
    with pytest.raises(OperationalError) as caught, engine.connect():
        pass
    assert db.first_line(caught.value) == f"no SQLite database at {missing}"
    assert not missing.exists()

    made = db.make_engine(f"sqlite:///{missing}")  # `check` and `db upgrade` on a new path
    db.upgrade(made)
    made.dispose()
    engine.dispose()
    with engine.connect() as conn:  # the same create=False engine, now that the file exists
        assert conn.execute(text("SELECT count(*) FROM readings")).scalar() == 0
    engine.dispose()


@pytest.mark.slow
def test_run_with_its_sqlite_file_deleted_fails_ticks_saying_so(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> None:
    path = tmp_path / "cw.db"
    cfg = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "1s"

        [schedule]
        interval = "1s"

        [database]
        url = "sqlite:///{path}"
    """)
    fake_api.set_balance(100.0, 20.0)
    proc = start_cli("run", config=cfg, env=ENV)

    def lines() -> list[str]:
        return proc.output()[1].splitlines()

    _wait(lambda: len([x for x in lines() if "creditwatch: tick fetch=" in x]) >= 2, 20, "two ticks")
    before = len(lines())
    path.unlink()
    failed = _wait(lambda: [x for x in lines()[before:] if TICK_FAILED in x], 10, "a failed tick")
    _wait(lambda: len([x for x in lines()[before:] if TICK_FAILED in x]) >= 2, 10, "a second one")
    assert proc.poll() is None, proc.output()
    assert not path.exists()
    done = proc.stop(signal.SIGTERM, timeout=30)
    assert done.code == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"the SQLite file {path} was deleted while creditwatch was running" in failed[0], failed
    assert not path.exists()
    noise = [x for x in done.stderr.splitlines()
             if (" WARNING " in x or " ERROR " in x) and TICK_FAILED not in x]
    assert not noise, noise


# --------------------------------------------------------------------------- URL masking


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://cw:s3cret@db.example:5432/cw",
     "postgresql+psycopg://cw:***@db.example:5432/cw"),
    ("postgresql+psycopg://db.example/cw?password=s3cret",
     "postgresql+psycopg://db.example/cw?password=***"),
    ("postgresql+psycopg://db.example/cw?sslmode=require&password=s3cret&application_name=cw",
     "postgresql+psycopg://db.example/cw?sslmode=require&password=***&application_name=cw"),
    ("postgresql+psycopg://cw@db.example/cw?sslpassword=k3yphrase&sslcert=/etc/cw.crt",
     "postgresql+psycopg://cw@db.example/cw?sslpassword=***&sslcert=/etc/cw.crt"),
    ("postgresql+psycopg://db.example/cw?PassWord=a&api_token=b&client_secret=c&sslkey=d&x=e",
     "postgresql+psycopg://db.example/cw?PassWord=***&api_token=***&client_secret=***&sslkey=***&x=e"),
    ("postgresql+psycopg://cw:p%40ss@db.example/cw", "postgresql+psycopg://cw:***@db.example/cw"),
    ("postgresql+psycopg://cw:p@ss/w@db.example/cw", "postgresql+psycopg://cw:***@db.example/cw"),
    ("postgresql+psycopg://cw:pa?ssw0rd@db.example/cw", "postgresql+psycopg://cw:***@db.example/cw"),
    ("postgresql+psycopg://:s3cret@db.example/cw", "postgresql+psycopg://:***@db.example/cw"),
    ("postgresql+psycopg://cw@db.example/cw", "postgresql+psycopg://cw@db.example/cw"),
    ("postgresql+psycopg://db.example/cw?password=", "postgresql+psycopg://db.example/cw?password="),
    ("sqlite:///var/lib/creditwatch/cw.db", "sqlite:///var/lib/creditwatch/cw.db"),
    ("sqlite:///cw.db?password=s3cret", "sqlite:///cw.db?password=***"),
    ("not a url at all s3cret", "<unparseable database URL>"),
])
def test_redacted_url_masks_a_password_anywhere(url: str, shown: str) -> None:
    assert db.redacted_url(url) == shown
    for secret in ("s3cret", "k3yphrase", "p@ss", "pa?ssw0rd"):
        assert secret not in db.redacted_url(url)
