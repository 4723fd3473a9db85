"""`creditwatch chart` and `creditwatch demo`: each returns (exit code, text for stdout), as
every command in worker.commands does."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from worker.chartrender import chart_format, write_chart
from worker.commands import _account, history_of, load, parse_since
from worker.errors import UsageError
from worker.settings_base import DEFAULT_ACCOUNT


def cmd_chart(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    """The balance-and-spend chart of `--since` to now, written to `--output` (PNG or SVG by its
    extension); one line on stdout."""
    since = parse_since(args.since)
    if since.total_seconds() <= 0:
        raise UsageError(f"--since: must be longer than 0s, not {args.since!r}")
    output = Path(args.output)
    chart_format(output)  # a wrong extension is a usage error before anything is read
    app = load(args, environ)
    account = _account(app, args.account)
    readings, now = history_of(app, account, since)
    # The title names the account when there is a choice of accounts.
    named = account if len(app.settings.watched) > 1 or account != DEFAULT_ACCOUNT else None
    return 0, write_chart(readings, now, since, output, named)


def cmd_demo(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[int, str]:
    """The demo: the story streams to stdout as it happens, so nothing is left to print after it."""
    from worker.demo import run_demo  # lazy: the demo's server and story serve this command alone

    return run_demo(sys.stdout, args.log_level, environ), ""
