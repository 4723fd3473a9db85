"""The status page (`/`) and its JSON twin (`/api/status`) that `run` serves on `[server] listen`,
and the charts the page shows.

A chart is drawn in a child process that reads the history itself and draws it with
matplotlib (`worker.storedchart`, about 1.5 s), so the service holds neither matplotlib nor a
month of readings in its memory: only the SVG comes back. Each chart is drawn once per (account,
span, latest reading) and kept until a newer reading replaces it: a page view between two
ticks draws nothing. After every tick a background thread draws the charts of the new
reading for every span someone looked at in the last hour, so the page is ready before its
next view; a view that arrives first draws (or waits for) its chart itself. Neither ever
holds up a tick: the tick only sets an event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from worker import __version__, db, store
from worker.app import App
from worker.chartrender import CHILD_TIMEOUT
from worker.errors import RuntimeProblem
from worker.reports import status_json
from worker.server import Page, text
from worker.statuspage import SPANS, ChartView, PageView, render_page, span_from_query
from worker.storedchart import Drawn, draw_in_child

log = logging.getLogger("creditwatch.server")

Draw = Callable[[str, timedelta, datetime], Drawn]  # (account, span, end) -> the chart
# A span someone viewed is drawn after each tick for this long afterwards.
VIEWED_FOR = 3600.0
# A view waits this long for a chart another thread is drawing, then shows the page without it.
WAIT_FOR_RENDER = CHILD_TIMEOUT + 5.0


def drawing_in_child(app: App) -> Draw:
    """Charts of the app's database drawn in a child process, bounded by the database's timeout."""
    d = app.settings.database

    def draw(account: str, span: timedelta, end: datetime) -> Drawn:
        return draw_in_child(d.url.get_secret_value(), d.timeout.total_seconds(), account, span, end)

    return draw


class ChartCache:
    """The newest chart per (account, span), each for one latest reading; drawn at most once
    per key, however many threads ask for it at the same time."""

    def __init__(self, app: App, draw: Draw) -> None:
        self._app = app
        self._draw_chart = draw
        self._lock = threading.Lock()
        self._done: dict[tuple[str, str], tuple[datetime, ChartView]] = {}
        self._busy: dict[tuple[str, str, datetime], threading.Event] = {}
        self.renders = 0  # charts drawn so far (a page view that found its chart drew none)

    def get(self, account: str, span: str, latest: datetime, wait: float = WAIT_FOR_RENDER) -> ChartView:
        """The chart of `span` ending at the account's `latest` reading: kept, awaited from the
        thread drawing it, or drawn now."""
        key = (account, span, latest)
        with self._lock:
            kept = self._done.get((account, span))
            if kept is not None and kept[0] == latest:
                return kept[1]
            event = self._busy.get(key)
            mine = event is None
            if event is None:
                event = self._busy[key] = threading.Event()
        if not mine:
            event.wait(wait)
            with self._lock:
                kept = self._done.get((account, span))
            if kept is not None and kept[0] == latest:
                return kept[1]
            return ChartView(None, problem="the chart is still being drawn; it shows at the next reload")
        view: ChartView | None = None
        try:
            view = self._draw(account, span, latest)
        finally:
            # Kept and no longer busy in one step: no other thread can start a second drawing.
            with self._lock:
                kept = self._done.get((account, span))
                if view is not None and (kept is None or kept[0] <= latest):
                    self._done[(account, span)] = (latest, view)
                del self._busy[key]
            event.set()
        return view

    def _draw(self, account: str, span: str, latest: datetime) -> ChartView:
        """The chart, or why there is none: a drawing that failed is kept too, until the next
        reading (drawing it again at every view would only fail again, a second and more each)."""
        try:
            drawn = self._draw_chart(account, SPANS[span], latest)
            svg = drawn.svg.decode("utf-8")
        except (RuntimeProblem, UnicodeDecodeError) as err:
            problem = self._app.redact(str(err))
            log.warning("status page: the %s chart of %s could not be drawn: %s", span, account, problem)
            return ChartView(None, problem=problem)
        finally:
            with self._lock:
                self.renders += 1
        return ChartView(svg, drawn.points, drawn.start, drawn.end)


class StatusPages:
    """The routes `/` and `/api/status`, and the drawing of charts after each tick."""

    def __init__(self, app: App, draw: Draw | None = None,
                 clock: Callable[[], datetime] = db.now_utc) -> None:
        self.app = app
        self.charts = ChartCache(app, draw or drawing_in_child(app))
        self._clock = clock
        # span -> monotonic time of its last view: only what someone looks at is drawn ahead,
        # so a service whose page nobody opens never starts a drawing.
        self._viewed: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- routes -------------------------------------------------------------------------------

    def page(self, query: str) -> Page:
        """`GET /?span=24h|7d|30d`: the status page."""
        try:
            span = span_from_query(query)
        except ValueError as err:
            return text(400, str(err))
        with self._lock:
            self._viewed[span] = max(self._viewed.get(span, 0.0), time.monotonic())
        try:
            snaps = self.app.snapshots(self._clock())
        except SQLAlchemyError as err:
            return text(503, str(self.app.database_problem(err)))
        charts = {s.account: self.charts.get(s.account, span, s.latest.fetched_at) if s.latest
                  else ChartView(None) for s in snaps}
        settings = self.app.settings
        view = PageView(snaps, charts, span, [c.name for c in settings.channels], settings.schedule.interval,
                        __version__, self.app.redact)
        return Page(200, "text/html; charset=utf-8", render_page(view).encode())

    def api(self, _query: str) -> Page:
        """`GET /api/status`: the document `status --json` prints."""
        try:
            snaps = self.app.snapshots(self._clock())
            leader = self.app.leader()
        except SQLAlchemyError as err:
            return text(503, str(self.app.database_problem(err)))
        return Page(200, "application/json", (status_json(snaps, leader) + "\n").encode())

    # -- after each tick --------------------------------------------------------------------------

    def tick_ended(self) -> None:
        """Draw the new reading's charts in the background; returns at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drawing, daemon=True, name="cw-charts")
            self._thread.start()
        self._wake.set()

    def _drawing(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._draw_latest()
            except Exception as err:  # noqa: BLE001 - the page must never take the service down
                log.warning("status page: drawing charts failed: %s", self.app.redact(repr(err)))

    def _draw_latest(self) -> None:
        with self.app.deps.sessions() as session:
            latest = {a.name: store.latest_reading(session, a.name) for a in self.app.settings.watched}
        now = time.monotonic()
        with self._lock:
            spans = [s for s in SPANS if now - self._viewed.get(s, float("-inf")) < VIEWED_FOR]
        for span in spans:
            for account, reading in latest.items():
                if reading is not None and not self._stop.is_set():
                    self.charts.get(account, span, reading.fetched_at)

    def close(self) -> None:
        """Stop drawing after the chart in hand (its child ends by itself within CHILD_TIMEOUT)."""
        self._stop.set()
        self._wake.set()
