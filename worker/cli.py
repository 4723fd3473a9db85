"""The command line: the only module that prints or chooses an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from worker import __version__
from worker.errors import EX_CONFIG, EX_USAGE, ConfigError, RuntimeProblem, UsageError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

log = logging.getLogger("creditwatch")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line naming what is wrong, instead of argparse's usage block.
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        raise SystemExit(EX_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="creditwatch", description="Watch an OpenRouter credit balance and alert "
                     "through apprise before it runs out.")
    parser.add_argument("--config", metavar="PATH",
                        help="settings file (default: $CREDITWATCH_CONFIG, else ./settings.toml)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="log verbosity on stderr (default INFO)")
    parser.add_argument("--version", action="version", version=f"creditwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="the service: tick now and every schedule.interval until SIGTERM")
    sub.add_parser("check", help="one tick now; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN")
    status = sub.add_parser("status", help="latest balance, burn rate, runway, alerts, last fetch")
    status.add_argument("--json", action="store_true", help="print a JSON object")
    history = sub.add_parser("history", help="stored balance history, oldest first")
    history.add_argument("--since", default="7d", metavar="DURATION", help='how far back (default "7d")')
    history.add_argument("--format", default="table", choices=("table", "json", "csv"))
    history.add_argument("--account", metavar="NAME", help="the account's history (default: the first)")
    chart = sub.add_parser("chart", help="write the balance and spend chart as PNG or SVG")
    chart.add_argument("--since", default="30d", metavar="DURATION", help='how far back (default "30d")')
    chart.add_argument("--account", metavar="NAME", help="the account's chart (default: the first)")
    chart.add_argument("--output", required=True, metavar="FILE", help="FILE.png or FILE.svg")
    sub.add_parser("demo", help="run the service against a simulated account for a minute; no key needed")
    notify = sub.add_parser("notify-test", help="send a test notification to one channel or all")
    notify.add_argument("--channel", metavar="NAME", help="only this channel")
    db = sub.add_parser("db", help="database maintenance")
    db.add_subparsers(dest="db_command", required=True, metavar="ACTION").add_parser(
        "upgrade", help="apply the Alembic migrations")
    silence = sub.add_parser("silence", help="hold back a rule's messages for a while")
    actions = silence.add_subparsers(dest="silence_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="silence RULE; prints the new silence's id")
    add.add_argument("rule", metavar="RULE")
    until = add.add_mutually_exclusive_group(required=True)
    until.add_argument("--for", dest="duration", metavar="DURATION", help='how long, e.g. "2h"')
    until.add_argument("--until", metavar="TIME", help='when it ends, e.g. "2026-12-01T09:00" '
                       "(in [alerts] timezone unless it says otherwise)")
    add.add_argument("--comment", default="", metavar="TEXT", help="why (shown in list and status)")
    add.add_argument("--account", metavar="NAME", help="only this account (default every account)")
    listing = actions.add_parser("list", help="the silences that have not ended")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    expire = actions.add_parser("expire", help="end a silence now")
    expire.add_argument("id", metavar="ID", type=_positive_int)
    config = sub.add_parser("config", help="settings tools")
    config.add_subparsers(dest="config_command", required=True, metavar="ACTION").add_parser(
        "check", help="validate the settings and print them resolved, secrets redacted")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `creditwatch` and `python -m worker`."""
    args = build_parser().parse_args(argv)
    from worker import commands  # the heavy imports live behind --help

    handler: Callable[[argparse.Namespace, Mapping[str, str]], tuple[int, str]]
    handler = commands.HANDLERS[_name(args)]
    failure = commands.failure_code(_name(args))
    try:
        code, text = handler(args, os.environ)
    except ConfigError as err:
        for line in err.problems:
            sys.stderr.write(f"{line}\n")
        return EX_CONFIG
    except UsageError as err:
        sys.stderr.write(f"creditwatch: {err}\n")
        return EX_USAGE
    except RuntimeProblem as err:
        sys.stderr.write(f"creditwatch: {err}\n")
        return failure
    except KeyboardInterrupt:
        return 130
    if text:
        sys.stdout.write(f"{text}\n")
    return code


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        msg = f"expected a silence id such as 3, not {text[:20]!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _name(args: argparse.Namespace) -> str:
    if args.command == "silence":
        return f"silence {args.silence_command}"
    if args.command == "db":
        return "db upgrade"
    if args.command == "config":
        return "config check"
    return str(args.command)
