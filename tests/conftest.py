"""Shared fixtures: loopback fakes, per-test databases and the real CLI as a subprocess."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pytest
from sqlalchemy.engine import URL, make_url

if TYPE_CHECKING:
    import psycopg

from fakes import CaptureServer, FakeOpenRouter, SmtpServer, WebhookReceiver, write_settings

__all__ = ["Cli", "CliProcess", "Result", "RunCli", "StartCli", "cli_env", "fresh_pg_database",
           "write_settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_ENV = "CREDITWATCH_TEST_PG_URL"
PG_SKIP_REASON = (
    f"set {PG_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test "
    "to run the PostgreSQL cases"
)


# --------------------------------------------------------------------------- fakes


@pytest.fixture
def fake_api() -> Iterator[FakeOpenRouter]:
    with FakeOpenRouter() as server:
        yield server


@pytest.fixture
def capture_server() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


# --------------------------------------------------------------------------- databases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cw.db"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test alone, dropped afterwards."""
    server_url = os.environ.get(PG_ENV)
    if not server_url:
        pytest.skip(PG_SKIP_REASON)
    yield from fresh_pg_database(server_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Every database test runs on both engines; PostgreSQL only when configured."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


def fresh_pg_database(server_url: str) -> Generator[str, None, None]:
    # A database per test (not a schema, not a transaction rollback): the code under
    # test opens its own connections, runs Alembic and commits, and pytest-xdist runs
    # tests in parallel against the same server.
    from psycopg import sql  # lazy: only the PostgreSQL cases need the driver

    url = make_url(server_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # psycopg2 is not installed
    name = f"cw_{uuid.uuid4().hex[:12]}"
    with _pg_admin_connection(url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with _pg_admin_connection(url) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                          .format(sql.Identifier(name)))


def _pg_admin_connection(url: URL) -> psycopg.Connection[Any]:
    """An autocommit connection (CREATE/DROP DATABASE refuse transactions)."""
    import psycopg  # lazy: see fresh_pg_database

    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError:
        # The named database may not exist on a fresh server; every server has this one.
        fallback = url.set(drivername="postgresql", database="postgres")
        return psycopg.connect(fallback.render_as_string(hide_password=False),
                               autocommit=True, connect_timeout=10)


# --------------------------------------------------------------------------- logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """In-process tests call commands.load, which installs the service's log handler on
    the root logger and caps a few loggers: put everything back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            logger.setLevel(levels.get(name, logging.NOTSET))


# --------------------------------------------------------------------------- the CLI


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


class CliProcess(subprocess.Popen[str]):
    """A running `python -m worker`; its output goes to files, read with .output().

    Files instead of pipes: a long `run` that logs a lot would block on a full pipe
    that nobody reads, so .stdout and .stderr are None here.
    """

    stdout_path: Path
    stderr_path: Path

    def output(self) -> tuple[str, str]:
        return (self.stdout_path.read_text(encoding="utf-8", errors="replace"),
                self.stderr_path.read_text(encoding="utf-8", errors="replace"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> Result:
        """Send `sig` (SIGTERM by default), wait for the exit and collect the output."""
        if self.poll() is None:
            self.send_signal(sig)
        code = self.wait(timeout)
        return Result(code, *self.output())


RunCli = Callable[..., Result]
StartCli = Callable[..., CliProcess]
Cli = Callable[..., Result]


def cli_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The caller's environment minus our own variables, plus `extra` (None deletes).

    A developer's real OPENROUTER_API_KEY or CREDITWATCH_CONFIG must never steer a
    test. PYTHONPATH points at this checkout so the code under test is this tree's,
    whether or not it is pip-installed.
    """
    env = {k: v for k, v in os.environ.items()
           if k != "OPENROUTER_API_KEY" and not k.startswith("CREDITWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # logs of a running `run` reach the files promptly
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli_argv(args: tuple[str, ...], config: Path | str | None) -> list[str]:
    config_args = ["--config", str(config)] if config is not None else []
    return [sys.executable, "-m", "worker", *config_args, *args]


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    """Run the real program to completion; cwd defaults to the test's tmp_path."""

    def run(*args: str, env: Mapping[str, str | None] | None = None,
            cwd: Path | str | None = None, timeout: float = 60,
            config: Path | str | None = None) -> Result:
        workdir = tmp_path if cwd is None else cwd
        done = subprocess.run(cli_argv(args, config), env=cli_env(env), cwd=workdir,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    return run


@pytest.fixture
def cli(run_cli: RunCli, request: pytest.FixtureRequest) -> Cli:
    """run_cli with the settings file first and the test module's KEY as the API key
    (`key=False` runs without one)."""
    module_key = request.module.KEY

    def call(config: Path | None, *args: str, key: bool = True,
             env: Mapping[str, str | None] | None = None) -> Result:
        base: dict[str, str | None] = {"OPENROUTER_API_KEY": module_key if key else None}
        return run_cli(*args, config=config, env={**base, **(env or {})})

    return call


@pytest.fixture
def start_cli(tmp_path: Path) -> Iterator[StartCli]:
    """Start the real program in the background (for `run`); killed at teardown."""
    started: list[CliProcess] = []
    files: list[IO[str]] = []

    def start(*args: str, env: Mapping[str, str | None] | None = None,
              cwd: Path | str | None = None, config: Path | str | None = None) -> CliProcess:
        stem = tmp_path / f"cli-{len(started)}"
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        files.extend([out.open("w", encoding="utf-8"), err.open("w", encoding="utf-8")])
        workdir = tmp_path if cwd is None else cwd
        proc = CliProcess(cli_argv(args, config), env=cli_env(env), cwd=workdir,
                          stdin=subprocess.DEVNULL, stdout=files[-2], stderr=files[-1],
                          text=True)
        proc.stdout_path, proc.stderr_path = out, err
        started.append(proc)
        return proc

    yield start
    for proc in started:
        _kill(proc)
    for handle in files:
        handle.close()


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
