"""The commands behind the CLI: each reads its settings, builds the service with worker.app,
and returns (exit code, text for stdout); cli.py prints it."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from worker import db, logs, procs, store
from worker.app import App, build, sender_factory
from worker.config_view import render_settings
from worker.delivery import Delivered, Result
from worker.domain import ExitCode, Reading
from worker.durations import DurationError, parse_duration
from worker.errors import EX_FAILURE, ConfigError, RuntimeProblem, UsageError
from worker.heartbeat import Heartbeat
from worker.redact import Redactor
from worker.reports import (
    check_line,
    history_csv,
    history_json,
    history_table,
    silences_json,
    silences_text,
    status_json,
    status_text,
)
from worker.settings import Settings, SettingsError, parse_settings
from worker.text import escape_controls
from worker.tickend import log_tick, ping

log = logging.getLogger("creditwatch")


def settings_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    return Path(args.config or environ.get("CREDITWATCH_CONFIG") or "settings.toml")


def parse_since(text: str, option: str = "--since") -> timedelta:
    try:
        return parse_duration(text)
    except DurationError as err:
        raise UsageError(f"{option}: {err}") from None


def failure_code(command: str) -> int:
    """`check` speaks Nagios: a failure to even run the tick is UNKNOWN."""
    return int(ExitCode.UNKNOWN) if command == "check" else EX_FAILURE


def load(args: argparse.Namespace, environ: Mapping[str, str], need_key: bool = False,
         inspect_in_child: bool = False) -> App:
    """Settings read and validated, logging set up with every secret redacted, the service
    built; nothing written."""
    settings = read_settings(settings_path(args, environ), environ)
    redact = Redactor()
    logs.setup(args.log_level, redact, settings.logging.format)
    return build(settings, environ, redact=redact, need_key=need_key, inspect_in_child=inspect_in_child)


def read_settings(path: Path, environ: Mapping[str, str]) -> Settings:
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


def _require_schema(app: App) -> None:
    url = app.engine.url
    # Connecting would create an empty SQLite file: a read-only command must not.
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") \
            and not Path(url.database).exists():
        raise RuntimeProblem(f"no database at {url.database} yet; run `creditwatch check` "
                             "or `creditwatch db upgrade` first")
    try:
        ready = inspect(app.engine).has_table("alembic_version")
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None
    if not ready:
        raise RuntimeProblem("the database has no creditwatch tables yet; run `creditwatch db upgrade` "
                             "or `creditwatch check` first")


# -- run and check ---------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ, need_key=True)
    app.migrate()
    beat = Heartbeat.from_settings(app.settings)
    try:
        app.deps.outbox.drop_removed_channels(db.now_utc())
        # The database's clock, as `run`'s leader uses: a host with a skewed clock still
        # stamps its reading in line with the others.
        report = app.tick(app.database_now())
    except SQLAlchemyError as err:
        ping(beat, False)
        raise app.database_problem(err) from None
    log_tick(report)
    ping(beat, report.outcome.ok)
    return int(report.exit_code), check_line(report)


def cmd_run(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    from worker.runner import Runner  # lazy: the server, metrics and page are `run`'s alone
    from worker.service import serve  # lazy: APScheduler is needed by `run` alone

    procs.limit_malloc_arenas()  # before any thread: see its docstring
    app = load(args, environ, need_key=True, inspect_in_child=True)
    app.migrate_in_child()
    runner = Runner(app)  # drops the messages of removed channels when it takes the lease
    runner.start()

    def stop() -> None:
        app.deps.outbox.request_stop()
        runner.stopped()

    try:
        return serve(runner.tick, app.settings.schedule.interval, app.worst_tick_seconds, stop), ""
    finally:
        runner.close()


# -- read-only commands ------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ)
    _require_schema(app)
    try:
        snaps = app.snapshots(app.database_now())  # the clock the leader stamps readings by
        leader = app.leader()
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None
    return 0, status_json(snaps, leader) if args.json else status_text(snaps, leader)


def cmd_history(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    since = parse_since(args.since)
    app = load(args, environ)
    account = _account(app, args.account)
    readings, _now = history_of(app, account, since)
    render = {"json": history_json, "csv": history_csv, "table": history_table}[args.format]
    return 0, render(readings)


def history_of(app: App, account: str, since: timedelta) -> tuple[list[Reading], datetime]:
    """The account's readings over the last `since` (rollups past the raw data), and `now`:
    what `history` prints and `chart` draws."""
    _require_schema(app)
    now = db.now_utc()
    try:
        with app.deps.sessions() as session:
            return store.history_between(session, account, now - since, now), now
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None


def _account(app: App, name: str | None) -> str:
    """The account a command shows: the one named, else the first watched."""
    names = [a.name for a in app.settings.watched]
    if name is None:
        return names[0]
    if name not in names:
        raise UsageError(f"--account: no account named {name!r} (accounts: {', '.join(names)})")
    return name


# -- notify-test, db upgrade, config check ---------------------------------------------------


def cmd_notify_test(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ)
    channels = app.settings.channels
    chosen = [c for c in channels if args.channel in (None, c.name)]
    if args.channel is not None and not chosen:
        names = ", ".join(c.name for c in channels) or "none configured"
        raise UsageError(f"--channel: no channel named {args.channel!r} (channels: {names})")
    if not chosen:
        raise RuntimeProblem("no channels are configured in the settings: add a [[channels]] table "
                             "with a name and an apprise url")
    make_sender = sender_factory(app.settings)
    timeout = app.settings.alerts.send_timeout.total_seconds()
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
    lines = [f"{c.name}: {_shown_result(results.get(c.name), app.redact)}" for c in chosen]
    ok = all(isinstance(results.get(c.name), Delivered) for c in chosen)
    return (0 if ok else EX_FAILURE), "\n".join(lines)


def _shown_result(result: Result | None, redact: Redactor) -> str:
    if isinstance(result, Delivered):
        return "accepted"
    reason = result.reason if result is not None else "the send did not finish"
    return f"FAILED: {redact(escape_controls(reason))}"


def cmd_silence_add(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ)
    rules = [r.name for r in app.settings.rules]
    if args.rule not in rules:
        raise UsageError(f"RULE: no rule named {args.rule!r} (rules: {', '.join(rules)})")
    account = _account(app, args.account) if args.account is not None else None
    span = parse_since(args.duration, "--for") if args.duration else timedelta(0)
    until = None if args.duration else _until(args.until, app)
    _require_schema(app)
    now = _database_now(app)  # the clock `run`'s leader judges silences by
    ends_at = until or now + span
    if ends_at <= now:
        raise UsageError("--until: the time has passed already")
    try:
        with app.deps.sessions.begin() as session:
            silence_id = store.add_silence(session, args.rule, account, now, ends_at,
                                           escape_controls(args.comment), now)
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None
    return 0, str(silence_id)


def _database_now(app: App) -> datetime:
    """The database's clock, which `run`'s leader ticks by: silences start and end by it
    whichever host's clock the command ran on."""
    try:
        return app.database_now()
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None


def _until(text: str, app: App) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError('--until: expected a time such as "2026-12-01T09:00" or '
                         '"2026-12-01T08:00:00Z"') from None
    return (when if when.tzinfo else when.replace(tzinfo=app.settings.alerts.zone)).astimezone(UTC)


def cmd_silence_list(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ)
    _require_schema(app)
    now = _database_now(app)
    try:
        with app.deps.sessions() as session:
            found = store.silences(session, now)
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None
    return 0, silences_json(found) if args.json else silences_text(found, now)


def cmd_silence_expire(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ)
    _require_schema(app)
    now = _database_now(app)
    try:
        with app.deps.sessions.begin() as session:
            ended = store.expire_silence(session, args.id, now)
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None
    if ended is None:
        raise RuntimeProblem(f"no silence #{args.id} (see `creditwatch silence list`)")
    if ended.ends_at <= now:
        return 0, f"silence #{ended.id} ({ended.rule}) had ended already"
    return 0, (f"silence #{ended.id} ({ended.rule}) expired; a still-firing alert is announced at the "
               "next tick")


def cmd_db_upgrade(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ)
    try:
        before = db.revision(app.engine)
    except SQLAlchemyError as err:
        raise app.database_problem(err) from None
    app.migrate()
    shown = f"database {db.redacted_url(app.settings.database.url.get_secret_value())}"
    if before == db.HEAD:
        return 0, f"{shown} is up to date (revision {db.HEAD})"
    if before is None:
        return 0, f"{shown}: created creditwatch's tables (revision {db.HEAD})"
    return 0, f"{shown}: upgraded from revision {before} to {db.HEAD}"


def cmd_config_check(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    app = load(args, environ)
    key_set = bool(environ.get(app.settings.openrouter.api_key_env))
    return 0, render_settings(app.settings, key_set, app.redact)


def cmd_chart(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    from worker.picturecmds import cmd_chart as chart  # lazy: picturecmds imports this module

    return chart(args, environ)


def cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    from worker.picturecmds import cmd_demo as demo  # lazy: picturecmds imports this module

    return demo(args, environ)


HANDLERS = {
    "run": cmd_run,
    "check": cmd_check,
    "status": cmd_status,
    "history": cmd_history,
    "chart": cmd_chart,
    "demo": cmd_demo,
    "notify-test": cmd_notify_test,
    "silence add": cmd_silence_add,
    "silence list": cmd_silence_list,
    "silence expire": cmd_silence_expire,
    "db upgrade": cmd_db_upgrade,
    "config check": cmd_config_check,
}
