"""The exit code of `check`: the most severe firing alert wins."""

from __future__ import annotations

from collections.abc import Iterable

from worker.domain import ExitCode, Severity


def exit_code(firing: Iterable[Severity], fetch_ok: bool) -> ExitCode:
    """CRITICAL > WARNING > UNKNOWN (fetch failed, nothing firing says more) > OK."""
    severities = set(firing)
    if Severity.CRITICAL in severities:
        return ExitCode.CRITICAL
    if Severity.WARNING in severities:
        return ExitCode.WARNING
    if not fetch_ok:
        return ExitCode.UNKNOWN
    return ExitCode.OK
