"""`run`'s duties around each tick: the log line, metrics, health, the heartbeat, the leader
lease, and the server that shows them."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from urllib.parse import urlsplit

from sqlalchemy.exc import SQLAlchemyError

from worker import db, health, procs
from worker.app import App
from worker.heartbeat import Heartbeat
from worker.leader import Leader, Standing
from worker.lease import LostLease
from worker.metrics import Metrics
from worker.reports import summary_line
from worker.server import Page, Route, Server, text
from worker.statusroutes import StatusPages
from worker.tickend import log_tick, ping

log = logging.getLogger("creditwatch")


class Runner:
    """One `run`: ticks through the App and publishes what each tick saw."""

    def __init__(self, app: App) -> None:
        settings = app.settings
        self.app = app
        # The lease decides whether this replica leads, and its clock (the database's) is the
        # tick's `now`: replicas with skewed clocks stamp one consistent history.
        self.leader = Leader(app.engine, app.fence, settings.schedule.interval)
        self.metrics = Metrics(settings.rules, [c.name for c in settings.channels])
        self.heartbeat = Heartbeat.from_settings(settings)
        self.record = health.Record(started_at=time.monotonic())
        self.server: Server | None = None
        self.pages: StatusPages | None = None  # `/` and `/api/status`, with [server] listen

    def start(self) -> None:
        """Serve /healthz, /metrics, the status page `/` and `/api/status` when `[server] listen`
        is set, and say what is watched."""
        address = self.app.settings.server.address
        if address is not None:
            self.pages = StatusPages(self.app)
            routes: dict[str, Route] = {"/healthz": self.healthz, "/metrics": self.metrics_page,
                                        "/": self.pages.page, "/api/status": self.pages.api}
            self.server = Server(address, routes).start()
        log.info(self.startup_line())
        self.leader.start()

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
        """One scheduled tick; never raises (the service outlives any one tick's failure). A
        standby only tries to take the lease; the leader ticks at the database's clock, each
        of its writes fenced by its epoch."""
        try:
            standing = self.leader.step()
        except SQLAlchemyError as err:
            log.error("tick failed, will retry at the next one: the leader lease: %s",
                      self.app.database_problem(err))
            self.metrics.leader = self.leader.leading  # 0 once the lease may have passed on
            self._ended(database_failed=True)
            ping(self.heartbeat, False)
            return None
        self._stand(standing)
        if not standing.leading:
            self._ended(database_failed=False)
            return standing.line  # a standby neither fetches nor pings the heartbeat
        if standing.took:
            self._took_over(standing)
        try:
            report = self.app.tick(standing.now)
        except LostLease as err:
            log.warning("tick abandoned, nothing of it was written: %s", err)
            self._ended(database_failed=False)
            return None
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
        if self.pages is not None:
            self.pages.tick_ended()  # draws the new reading's charts in the background
        self._ended(database_failed=False)
        ping(self.heartbeat, report.outcome.ok)
        procs.trim_malloc()  # the tick's garbage goes back to the system, not to a high-water mark
        return summary_line(report)

    def _stand(self, standing: Standing) -> None:
        """Health and metrics say whether this replica leads; a standby shows no figures."""
        self.metrics.leader = standing.leading
        if self.record.standby == standing.leading:
            self.record = replace(self.record, standby=not standing.leading)
            if not standing.leading:
                self.metrics.show(())

    def _took_over(self, standing: Standing) -> None:
        """A new epoch: drop the waiting messages of channels no longer in the settings (the
        leader's settings rule the outbox)."""
        try:
            self.app.deps.outbox.drop_removed_channels(standing.now)
        except (SQLAlchemyError, LostLease) as err:
            shown = self.app.database_problem(err) if isinstance(err, SQLAlchemyError) else err
            log.error("could not check for messages of removed channels: %s", shown)

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
        self.leader.close()  # after the tick in hand: a standby takes over at its next tick
        if self.pages is not None:
            self.pages.close()
        if self.server is not None:
            self.server.close()
