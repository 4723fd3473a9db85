"""The commands behind the CLI: wiring settings, database, API and channels together.

Handlers return (exit code, text for stdout); cli.py prints it.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from worker import db, logs, store
from worker.config_view import render_settings
from worker.delivery import Delivered, Result, Sender, inspect_in_child
from worker.domain import ExitCode, Reading
from worker.durations import DurationError, parse_duration
from worker.errors import EX_FAILURE, ConfigError, RuntimeProblem, UsageError
from worker.forecast import burn_rate, runway_hours
from worker.formatting import hours_text, money
from worker.migrate import URL_VARIABLE
from worker.openrouter import Endpoint, new_session
from worker.outbox import Config, Outbox
from worker.redact import Redactor, UrlInfo, channel_problem, credentials, inspect_url
from worker.reports import (
    FiringAlert,
    LastFetch,
    StatusView,
    history_csv,
    history_json,
    history_table,
    status_json,
    status_text,
)
from worker.settings import Settings, SettingsError, parse_settings
from worker.text import escape_controls
from worker.tick import Deps, TickReport, run_tick, summary_line, worst_case_seconds

log = logging.getLogger("creditwatch")


def settings_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    return Path(args.config or environ.get("CREDITWATCH_CONFIG") or "settings.toml")


def parse_since(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except DurationError as err:
        raise UsageError(f"--since: {err}") from None


@dataclass
class Loaded:
    settings: Settings
    redact: Redactor
    engine: Engine


def failure_code(command: str) -> int:
    """`check` speaks Nagios: a failure to even run the tick is UNKNOWN."""
    return int(ExitCode.UNKNOWN) if command == "check" else EX_FAILURE


def load(args: argparse.Namespace, environ: Mapping[str, str], need_key: bool = False,
         inspect_in_child: bool = False) -> Loaded:
    """Settings validated, secrets registered with the log redactor, engine built; nothing written."""
    settings = _read_settings(settings_path(args, environ), environ)
    redact = Redactor()
    logs.setup(args.log_level, redact)
    redact.add([environ.get(settings.openrouter.api_key_env, ""), *_db_secrets(settings)])
    infos = list(zip([c.name for c in settings.channels], _inspect(settings, inspect_in_child), strict=True))
    for _, info in infos:
        redact.add(info.secrets)
    problems = [line for i, (name, info) in enumerate(infos) if (line := channel_problem(i, name, info))]
    key_problem = settings.openrouter.key_problem(environ) if need_key else None
    problems += [key_problem] if key_problem else []
    if problems:
        raise ConfigError([redact(p) for p in problems])
    return Loaded(settings, redact, _engine(settings, redact))


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


def _read_settings(path: Path, environ: Mapping[str, str]) -> Settings:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"settings: cannot read {path}: {err.strerror or err}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"settings: {path} is not UTF-8 text"]) from None
    try:
        return parse_settings(text, environ)
    except SettingsError as err:
        raise ConfigError(err.problems) from None


def _db_secrets(settings: Settings) -> list[str]:
    # The userinfo password and any secret-named query value (?password=, ?sslpassword=),
    # as written and decoded: drivers may quote either in their errors.
    return list(credentials(settings.database.url.get_secret_value()))


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


def database_problem(err: SQLAlchemyError, loaded: Loaded) -> RuntimeProblem:
    url = db.redacted_url(loaded.settings.database.url.get_secret_value())
    return RuntimeProblem(loaded.redact(f"database {url}: {db.first_line(err)}"))


def migrate(loaded: Loaded) -> None:
    """Apply the migrations in process (`check`, `db upgrade`), with the migration's bound."""
    if _at_head(loaded):
        return
    engine = db.make_engine(loaded.settings.database.url.get_secret_value(), db.MIGRATION_TIMEOUT)
    try:
        db.upgrade(engine)
    except SQLAlchemyError as err:
        raise database_problem(err, loaded) from None
    finally:
        engine.dispose()


def _at_head(loaded: Loaded) -> bool:
    try:
        return db.at_head(loaded.engine)
    except SQLAlchemyError as err:
        raise database_problem(err, loaded) from None


def migrate_in_child(loaded: Loaded, environ: Mapping[str, str]) -> None:
    """Migrate in a child process, so the service never keeps Alembic in memory."""
    if _at_head(loaded):
        return
    env = {**environ, URL_VARIABLE: loaded.settings.database.url.get_secret_value()}
    done = subprocess.run([sys.executable, "-m", "worker.migrate"], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    if done.returncode != 0:
        url = db.redacted_url(loaded.settings.database.url.get_secret_value())
        last = (done.stderr.strip().splitlines() or ["migration failed"])[-1]
        raise RuntimeProblem(loaded.redact(f"database {url}: {last}"))


def _require_schema(loaded: Loaded) -> None:
    url = loaded.engine.url
    # Connecting would create an empty SQLite file: a read-only command must not.
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        raise RuntimeProblem(f"no database at {url.database} yet; run `creditwatch check` "
                             "or `creditwatch db upgrade` first")
    try:
        ready = inspect(loaded.engine).has_table("alembic_version")
    except SQLAlchemyError as err:
        raise database_problem(err, loaded) from None
    if not ready:
        raise RuntimeProblem("the database has no creditwatch tables yet; run `creditwatch db upgrade` "
                             "or `creditwatch check` first")


# -- run and check ---------------------------------------------------------------------------


def _tick_deps(loaded: Loaded, environ: Mapping[str, str]) -> Deps:
    settings = loaded.settings
    o = settings.openrouter
    endpoint = Endpoint(o.base_url, environ[o.api_key_env], o.timeout.total_seconds())
    factory = store.sessions(loaded.engine)
    outbox = Outbox(factory, _channel_urls(settings), loaded.redact, outbox_config(settings),
                    _sender_factory(settings))
    return Deps(settings, factory, new_session(), endpoint, outbox, loaded.redact)


def outbox_config(settings: Settings) -> Config:
    a = settings.alerts
    return Config(a.send_timeout, settings.schedule.interval, a.give_up_after)


def _channel_urls(settings: Settings) -> dict[str, str]:
    return {c.name: c.url.get_secret_value() for c in settings.channels}


def _sender_factory(settings: Settings) -> Callable[[str, str, float], Sender]:
    # The sender child runs in this process's environment, minus the API key it never needs.
    child_env = {k: v for k, v in os.environ.items() if k != settings.openrouter.api_key_env}
    return lambda name, url, timeout: Sender(name, url, timeout, child_env)


def cmd_check(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    loaded = load(args, environ, need_key=True)
    migrate(loaded)
    try:
        deps = _tick_deps(loaded, environ)
        deps.outbox.drop_removed_channels(db.now_utc())
        report = run_tick(deps, db.now_utc())
    except SQLAlchemyError as err:
        raise database_problem(err, loaded) from None
    log.info(summary_line(report))
    return int(report.exit_code), nagios_line(report)


def nagios_line(report: TickReport) -> str:
    code = report.exit_code
    parts = []
    if report.latest is not None:
        parts.append(f"{money(report.latest.remaining)} remaining")
    if report.burn_per_hour is not None:
        parts.append(f"burning ${report.burn_per_hour:,.2f}/h")
    if report.runway_hours is not None:
        parts.append(f"about {hours_text(report.runway_hours)} left")
    if not report.outcome.ok:
        parts.append(f"fetch failed: {report.outcome.message}")
    firing = ", ".join(f"{name} ({sev.value})" for name, sev in report.firing)
    parts.append(f"firing: {firing}" if firing else "nothing firing")
    perf = f" | remaining={report.latest.remaining:.2f}" if report.latest else ""
    return f"CREDITWATCH {code.name} - {'; '.join(parts)}{perf}"


def cmd_run(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    from worker.service import serve  # lazy: APScheduler is needed by `run` alone

    loaded = load(args, environ, need_key=True, inspect_in_child=True)
    migrate_in_child(loaded, environ)
    deps = _tick_deps(loaded, environ)
    try:
        deps.outbox.drop_removed_channels(db.now_utc())
    except SQLAlchemyError as err:
        log.error("could not check for messages of removed channels: %s", database_problem(err, loaded))

    def tick() -> None:
        try:
            log.info(summary_line(run_tick(deps, db.now_utc())))
        except SQLAlchemyError as err:
            log.error("tick failed, will retry at the next one: %s", database_problem(err, loaded))
        except Exception as err:  # noqa: BLE001 - the service outlives any one tick's bug
            log.error("tick failed, will retry at the next one: %s", loaded.redact(repr(err)))

    budget = worst_case_seconds(loaded.settings, outbox_config(loaded.settings).worst_case)
    return serve(tick, loaded.settings.schedule.interval, budget, deps.outbox.request_stop), ""


# -- read-only commands ------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    loaded = load(args, environ)
    _require_schema(loaded)
    try:
        view = status_view(loaded, db.now_utc())
    except SQLAlchemyError as err:
        raise database_problem(err, loaded) from None
    return 0, status_json(view) if args.json else status_text(view)


def status_view(loaded: Loaded, now: datetime) -> StatusView:
    settings = loaded.settings
    window = settings.forecast.window
    with store.sessions(loaded.engine)() as session:
        latest = store.latest_reading(session)
        history = store.forecast_history(session, now - window, now)
        attempt = store.last_attempt(session)
        names = [r.name for r in settings.rules]
        firing = store.firing_alerts(session, names)
        backlog = store.backlog(session)
    burn = burn_rate(history, now, window)
    runway = runway_hours(latest.remaining, burn) if latest else None
    last = LastFetch(attempt.at, attempt.kind == "ok", attempt.message) if attempt else None
    # Severity from the settings in force, in case it was edited while the alert fires.
    severity = {r.name: r.severity.value for r in settings.rules}
    alerts = [FiringAlert(a.rule, severity.get(a.rule, a.severity), a.firing_since, a.summary)
              for a in firing]
    return StatusView(latest, burn, runway, window, last, alerts, backlog)


def cmd_history(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    since = parse_since(args.since)
    loaded = load(args, environ)
    _require_schema(loaded)
    now = db.now_utc()
    try:
        with store.sessions(loaded.engine)() as session:
            readings: list[Reading] = store.history_between(session, now - since, now)
    except SQLAlchemyError as err:
        raise database_problem(err, loaded) from None
    render = {"json": history_json, "csv": history_csv, "table": history_table}[args.format]
    return 0, render(readings)


# -- notify-test, db upgrade, config check ---------------------------------------------------


def cmd_notify_test(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    loaded = load(args, environ)
    chosen = [c for c in loaded.settings.channels if args.channel in (None, c.name)]
    if args.channel is not None and not chosen:
        names = ", ".join(c.name for c in loaded.settings.channels) or "none configured"
        raise UsageError(f"--channel: no channel named {args.channel!r} (channels: {names})")
    if not chosen:
        raise RuntimeProblem("no channels are configured in the settings: add a [[channels]] table "
                             "with a name and an apprise url")
    make_sender = _sender_factory(loaded.settings)
    timeout = loaded.settings.alerts.send_timeout.total_seconds()
    results: dict[str, Result] = {}

    def one(name: str, url: str) -> None:
        sender = make_sender(name, url, timeout)
        try:
            results[name] = sender.send(0, "creditwatch test notification",
                                        f"This is a test from creditwatch to channel {name!r}.\n"
                                        "If you can read it, alerts will reach you here.", "info")
        finally:
            sender.close()

    # In parallel, each bounded by send_timeout: a stuck channel holds up no other.
    threads = [threading.Thread(target=one, args=(c.name, c.url.get_secret_value()), daemon=True)
               for c in chosen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [f"{c.name}: {_shown_result(results.get(c.name), loaded.redact)}" for c in chosen]
    ok = all(isinstance(results.get(c.name), Delivered) for c in chosen)
    return (0 if ok else EX_FAILURE), "\n".join(lines)


def _shown_result(result: Result | None, redact: Redactor) -> str:
    if isinstance(result, Delivered):
        return "accepted"
    reason = result.reason if result is not None else "the send did not finish"
    return f"FAILED: {redact(escape_controls(reason))}"


def cmd_db_upgrade(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    loaded = load(args, environ)
    try:
        before = db.revision(loaded.engine)
    except SQLAlchemyError as err:
        raise database_problem(err, loaded) from None
    migrate(loaded)
    shown = f"database {db.redacted_url(loaded.settings.database.url.get_secret_value())}"
    if before == db.HEAD:
        return 0, f"{shown} is up to date (revision {db.HEAD})"
    if before is None:
        return 0, f"{shown}: created creditwatch's tables (revision {db.HEAD})"
    return 0, f"{shown}: upgraded from revision {before} to {db.HEAD}"


def cmd_config_check(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    loaded = load(args, environ)
    key_set = bool(environ.get(loaded.settings.openrouter.api_key_env))
    return 0, render_settings(loaded.settings, key_set, loaded.redact)


HANDLERS = {
    "run": cmd_run,
    "check": cmd_check,
    "status": cmd_status,
    "history": cmd_history,
    "notify-test": cmd_notify_test,
    "db upgrade": cmd_db_upgrade,
    "config check": cmd_config_check,
}
