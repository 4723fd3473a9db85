"""`run`'s duties around each tick: the log line, metrics, health, the heartbeat, and the
server that shows them; and the heartbeat for `check`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from worker import db, health, logs
from worker.app import App
from worker.heartbeat import Heartbeat
from worker.metrics import Metrics
from worker.reports import summary_line
from worker.server import Page, Route, Server, text
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


class Runner:
    """One `run`: ticks through the App and publishes what each tick saw."""

    def __init__(self, app: App, clock: Callable[[], datetime] = db.now_utc) -> None:
        settings = app.settings
        self.app = app
        self._clock = clock
        self.metrics = Metrics(settings.rules, [c.name for c in settings.channels])
        self.heartbeat = Heartbeat.from_settings(settings)
        self.record = health.Record(started_at=time.monotonic())
        self.server: Server | None = None

    def start(self) -> None:
        """Serve /healthz and /metrics when `[server] listen` is set, and say what is watched."""
        address = self.app.settings.server.address
        if address is not None:
            routes: dict[str, Route] = {"/healthz": self.healthz, "/metrics": self.metrics_page}
            self.server = Server(address, routes).start()
        log.info(self.startup_line())

    def startup_line(self) -> str:
        s = self.app.settings
        host = urlsplit(s.openrouter.base_url).netloc
        database = db.redacted_url(s.database.url.get_secret_value())
        channels = ", ".join(c.name for c in s.channels) or "none"
        rules = ", ".join(r.name for r in s.rules)
        serving = f"http://{s.server.listen}" if s.server.listen else "off"
        return (f"creditwatch watching {host} every {s.schedule.interval.total_seconds():g}s; "
                f"database {database}; channels: {channels}; rules: {rules}; server: {serving}")

    def tick(self) -> str | None:
        """One scheduled tick; never raises (the service outlives any one tick's failure)."""
        try:
            report = self.app.tick(self._clock())
        except SQLAlchemyError as err:
            log.error("tick failed, will retry at the next one: %s", self.app.database_problem(err))
            self._ended(database_failed=True)
            ping(self.heartbeat, False)
            return None
        except Exception as err:  # noqa: BLE001 - the service outlives any one tick's bug
            log.error("tick failed, will retry at the next one: %s", self.app.redact(repr(err)))
            self._ended(database_failed=False)
            ping(self.heartbeat, False)
            return None
        log_tick(report)
        self.metrics.observe(report)
        self._ended(database_failed=False)
        ping(self.heartbeat, report.outcome.ok)
        return summary_line(report)

    def _ended(self, database_failed: bool) -> None:
        self.record = health.tick_ended(self.record, time.monotonic(), database_failed)

    def stopped(self) -> None:
        self.record = replace(self.record, stopped=True)

    # -- pages ----------------------------------------------------------------------------

    def healthz(self, _query: str) -> Page:
        settings = self.app.settings
        verdict = health.judge(self.record, time.monotonic(), settings.schedule.interval,
                               self.app.worst_tick_seconds)
        return text(200 if verdict.healthy else 503, verdict.reason)

    def metrics_page(self, _query: str) -> Page:
        return Page(200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.exposition())

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
