"""How every tick of `run` and `check` ends: its one log line and the heartbeat ping.

Apart from worker.runner so that `check` does not import the server, the metrics and the
status page, which only `run` needs."""

from __future__ import annotations

import logging

from worker import logs
from worker.heartbeat import Heartbeat
from worker.reports import summary_line
from worker.snapshot import TickReport

log = logging.getLogger("creditwatch")


def ping(beat: Heartbeat | None, ok: bool) -> None:
    """The heartbeat after a tick (`/fail` when its fetch failed); a failed ping is a WARNING."""
    if beat is None:
        return
    result = beat.ping(ok)
    if not result.ok:
        log.warning("heartbeat: %s", result.message)


def log_tick(report: TickReport) -> None:
    """The one line per tick, with its figures as fields for JSON logs."""
    latest = report.snapshot.latest
    outcome = report.outcome

    def rules(reason: str) -> list[str]:
        return [t.rule for t in report.transitions if t.reason.value == reason]

    remaining = latest.remaining if latest else None
    fields = logs.fields(event="tick", fetch=outcome.kind.value, remaining=remaining,
                         duration_s=round(report.seconds, 3), fired=rules("first"), repeated=rules("repeat"),
                         resolved=rules("resolved"), delivered=report.delivered, failed=report.failed)
    level = logging.INFO if outcome.ok else logging.WARNING
    log.log(level, summary_line(report), extra=fields)
