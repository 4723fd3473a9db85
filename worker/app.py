"""The wiring's public home: settings in, a ready App out. No argparse and no logging set-up
here; the CLI, the tests and the benchmarks all build the service the same way.

    app = build(settings, os.environ, need_key=True)
    report = app.tick(now)        # what `check` does, and every tick of `run`
    view = app.snapshot(now)      # what `status` shows
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from worker import db, heartbeat, store
from worker.delivery import Sender, inspect_in_child
from worker.domain import AlertState, Silence
from worker.errors import ConfigError, RuntimeProblem
from worker.heartbeat import heartbeat_secrets
from worker.lease import Leadership, leadership
from worker.migrate import URL_VARIABLE
from worker.openrouter import Endpoint, new_session
from worker.outbox import Config, Outbox
from worker.redact import Redactor, UrlInfo, channel_problem, credentials, inspect_url
from worker.retention import Retention
from worker.sendpolicy import Backlog
from worker.settings import Settings
from worker.snapshot import Snapshot, TickReport, figures, take
from worker.text import escape_controls
from worker.tick import Deps, run_tick, worst_case_seconds


@dataclass
class App:
    """One configured creditwatch: its settings, redactor, engine and tick dependencies."""

    settings: Settings
    redact: Redactor
    engine: Engine
    deps: Deps
    # The epoch `run` writes under (worker.leader sets it); not enforced for other commands.
    fence: store.Fence = field(default_factory=store.Fence)

    def tick(self, now: datetime) -> TickReport:
        """One tick at `now` (`run` and `check` pass the database's clock); database errors
        propagate, and LostLease when `run`'s fence no longer holds."""
        return run_tick(self.deps, now)

    def database_now(self) -> datetime:
        """The database's clock: what `check` stamps its tick with, as `run`'s leader does, so
        that readings agree whichever host wrote them."""
        with self.deps.sessions() as session:
            return store.database_now(session)

    def leader(self) -> Leadership | None:
        """Who leads `run` (or led last), judged by the database's clock; None when no lease
        was ever taken (or the database predates leases)."""
        with self.deps.sessions() as session:
            if not inspect(session.connection()).has_table("leader_lease"):
                return None
            lease, now = store.read_lease(session)
        return leadership(lease, now)

    def snapshot(self, now: datetime, account: str | None = None) -> Snapshot:
        """What `status` shows of one account (the first watched, unless named), read from the
        database as of `now`."""
        return self.snapshots(now, [account or self.settings.watched[0].name])[0]

    def snapshots(self, now: datetime, accounts: list[str] | None = None) -> list[Snapshot]:
        """What `status` shows of each account (every watched one unless named), read from the
        database as of `now`."""
        settings = self.settings
        window = settings.forecast.window
        names = accounts if accounts is not None else [a.name for a in settings.watched]
        with self.deps.sessions() as session:
            backlog = store.backlog(session)
            silences = store.silences(session, now)
            shown = [self._snapshot(session, name, now, window, backlog, silences) for name in names]
        return shown

    def _snapshot(self, session: Session, account: str, now: datetime, window: timedelta,
                  backlog: list[Backlog], silences: list[Silence]) -> Snapshot:
        latest = store.latest_reading(session, account)
        history = store.forecast_history(session, account, now - window, now)
        states: dict[str, list[AlertState]] = {}
        for (rule, _), state in store.load_states(session, account).items():
            states.setdefault(rule, []).append(state)
        keys = sorted(store.load_keys(session, account).values(), key=lambda k: (k.name, k.id))
        waiting = {b.channel: b.waiting for b in backlog}
        return take(now, figures(latest, history, now, window), window, store.last_fetch(session, account),
                    self.settings.rules_for(account), states, waiting, backlog, account=account, keys=keys,
                    silences=silences)

    @property
    def worst_tick_seconds(self) -> float:
        """The longest one tick can take: the bound `run` waits for at shutdown."""
        beat = heartbeat.TIMEOUT if self.settings.heartbeat.url is not None else 0.0
        return worst_case_seconds(self.settings, self.deps.outbox.worst_case) + beat

    def database_problem(self, err: SQLAlchemyError) -> RuntimeProblem:
        """A database error as one line naming the database (never its password)."""
        url = db.redacted_url(self.settings.database.url.get_secret_value())
        return RuntimeProblem(self.redact(f"database {url}: {escape_controls(db.first_line(err))}"))

    def migrate(self) -> None:
        """Apply the migrations in this process (`check`, `db upgrade`), with the migration's
        longer bound on each database call; RuntimeProblem on failure."""
        if self._at_head():
            return
        engine = db.make_engine(self.settings.database.url.get_secret_value(), db.MIGRATION_TIMEOUT)
        try:
            db.upgrade(engine)
        except SQLAlchemyError as err:
            raise self.database_problem(err) from None
        finally:
            engine.dispose()

    def migrate_in_child(self) -> None:
        """Migrate in a child process, so a long-lived `run` never keeps Alembic in memory."""
        if self._at_head():
            return
        env = {**os.environ, URL_VARIABLE: self.settings.database.url.get_secret_value()}
        done = subprocess.run([sys.executable, "-m", "worker.migrate"], env=env, capture_output=True,
                              text=True, timeout=db.MIGRATION_TIMEOUT + 30, check=False)
        if done.returncode != 0:
            url = db.redacted_url(self.settings.database.url.get_secret_value())
            last = (done.stderr.strip().splitlines() or ["migration failed"])[-1]
            raise RuntimeProblem(self.redact(f"database {url}: {escape_controls(last)}"))

    def _at_head(self) -> bool:
        try:
            return db.at_head(self.engine)
        except SQLAlchemyError as err:
            raise self.database_problem(err) from None

    def close(self) -> None:
        self.deps.http.close()
        self.engine.dispose()


def build(settings: Settings, environ: Mapping[str, str], *, redact: Redactor | None = None,
          engine: Engine | None = None, need_key: bool = False, inspect_in_child: bool = False) -> App:
    """Validate what settings alone cannot (the key, each channel URL), register every secret
    with `redact`, and wire the service; ConfigError lists every problem. Nothing is written."""
    redact = redact if redact is not None else Redactor()
    redact.add([*(environ.get(a.api_key_env, "") for a in settings.watched),
                *credentials(settings.database.url.get_secret_value()), *heartbeat_secrets(settings)])
    infos = _inspect(settings, inspect_in_child)
    for info in infos:
        redact.add(info.secrets)
    problems = [line for i, (channel, info) in enumerate(zip(settings.channels, infos, strict=True))
                if (line := channel_problem(i, channel.name, info))]
    problems += settings.key_problems(environ) if need_key else []
    if problems:
        raise ConfigError([redact(p) for p in problems])
    engine = engine if engine is not None else _engine(settings, redact)
    fence = store.Fence()
    return App(settings, redact, engine, _deps(settings, environ, engine, redact, fence), fence)


def _inspect(settings: Settings, in_child: bool) -> list[UrlInfo]:
    """Each channel URL judged by apprise; in a child process for `run`, which would
    otherwise keep apprise's plugin registry (~14.5 MB) for the rest of its life."""
    urls = [c.url.get_secret_value() for c in settings.channels]
    if not in_child or not urls:
        return [inspect_url(url) for url in urls]
    infos = inspect_in_child(urls)
    if isinstance(infos, str):
        raise RuntimeProblem(infos)
    return infos


def _engine(settings: Settings, redact: Redactor) -> Engine:
    url = settings.database.url.get_secret_value()
    try:
        make_url(url)
    except Exception:  # noqa: BLE001 - ArgumentError, a port that is no number...: unusable
        # Its own message quotes the URL, or the part it choked on, which may be the password.
        raise ConfigError(["database.url: not a valid SQLAlchemy URL (the form is "
                           "dialect+driver://user:password@host:port/database)"]) from None
    try:
        return db.make_engine(url, settings.database.timeout.total_seconds())
    except Exception as err:  # noqa: BLE001 - a missing dialect or driver...: the URL is unusable
        reason = escape_controls(db.first_line(err))
        raise ConfigError([redact(f"database.url: cannot use {db.redacted_url(url)}: {reason}")]) from None


def _deps(settings: Settings, environ: Mapping[str, str], engine: Engine, redact: Redactor,
          fence: store.Fence) -> Deps:
    o = settings.openrouter
    endpoints = {a.name: Endpoint(o.base_url, environ.get(a.api_key_env, ""), o.timeout.total_seconds())
                 for a in settings.watched}
    sessions = store.fenced(engine, fence)  # every write of a `run` leader checks its epoch
    channels = {c.name: c.url.get_secret_value() for c in settings.channels}
    outbox = Outbox(sessions, channels, redact, outbox_config(settings), sender_factory(settings))
    d = settings.database
    retention = Retention(sessions, d.keep_raw, d.keep_rollups)
    return Deps(settings, sessions, new_session(), endpoints, outbox, retention, redact)


def outbox_config(settings: Settings) -> Config:
    a = settings.alerts
    return Config(a.send_timeout, settings.schedule.interval, a.give_up_after)


def sender_factory(settings: Settings) -> Callable[[str, str, float], Sender]:
    """Sender children run in this process's environment, minus the API key they never need."""
    keys = {settings.openrouter.api_key_env, *(a.api_key_env for a in settings.watched)}
    child_env = {k: v for k, v in os.environ.items() if k not in keys}
    return lambda name, url, timeout: Sender(name, url, timeout, child_env)
