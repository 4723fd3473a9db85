"""The status page without a browser: its HTML (escaping, nothing loaded from elsewhere, no
secret) from hand-made snapshots, and its charts through the real App on SQLite: drawn once
per (account, span, latest reading), ahead of time after a tick, never twice at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from history import seed, usage_after

from worker import store
from worker.app import App, build
from worker.chart import ChartData
from worker.chartrender import render
from worker.domain import (
    FetchKind,
    FetchOutcome,
    FetchRecord,
    Figures,
    KeyRecord,
    Reading,
    Severity,
    Silence,
    Status,
)
from worker.errors import RuntimeProblem
from worker.redact import Redactor
from worker.sendpolicy import Backlog, Head, OutboxStatus
from worker.settings import parse_settings
from worker.snapshot import AlertView, Snapshot
from worker.statuspage import (
    DEFAULT_SPAN,
    ChartView,
    PageView,
    refresh_seconds,
    render_page,
    safe_svg,
    span_from_query,
)
from worker.statusroutes import StatusPages
from worker.storedchart import Drawn, draw, draw_in_child

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
SECRET = "sk-or-v1-0123456789abcdef0123456789abcdef"


class Parsed(HTMLParser):
    """The tags, attributes and text of a document, as a browser's tokenizer sees them."""

    def __init__(self, document: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._raw = 0
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def snapshot(account: str = "prod", text: str = HOSTILE) -> Snapshot:
    """A snapshot whose every outside text is `text`."""
    latest = Reading(NOW - timedelta(minutes=1), 100.0, 58.0)
    firing = AlertView(text, Severity.CRITICAL, Status.FIRING, NOW - timedelta(hours=1), text,
                       account=account, key=text)
    pending = AlertView("runway", Severity.WARNING, Status.PENDING, NOW, text, NOW + timedelta(minutes=5),
                        account)
    key = KeyRecord("abc123", text, text, 10.0, 0.5, None, 9.5, 9.5, 9.5, 9.5, NOW)
    head = Head(1, text, text, OutboxStatus.FAILED, 2, NOW, next_try_at=NOW + timedelta(minutes=1),
                last_error=text)
    failed = FetchRecord(NOW, FetchKind.TRANSIENT, text)
    return Snapshot(NOW, Figures(latest, 1.25, 33.6), timedelta(hours=6), failed, (firing,), (pending,),
                    {text: 3}, (Backlog(text, 3, head),), account, (key,))


def page(snaps: list[Snapshot], charts: dict[str, ChartView] | None = None, span: str = DEFAULT_SPAN,
         scrub: Callable[[str], str] = lambda s: s, interval: timedelta = timedelta(minutes=5)) -> str:
    return render_page(PageView(snaps, charts or {}, span, ["ops"], interval, "0.1.0", scrub))


def test_outside_text_is_text_everywhere_never_markup() -> None:
    document = page([snapshot(account=HOSTILE)])
    parsed = Parsed(document)
    assert not parsed.named("script") and not parsed.named("img")
    assert all("onerror" not in attrs for _, attrs in parsed.tags)
    # Every place it appears, it is the literal text (alert, key, fetch error, channel, account...).
    assert sum(HOSTILE in chunk for chunk in parsed.text) >= 8
    assert HOSTILE not in document  # only ever escaped in the source


def test_the_page_loads_nothing_from_elsewhere_and_reads_on_a_phone() -> None:
    svg = render(ChartData(timedelta(hours=1), NOW - timedelta(hours=1), NOW, ((NOW, 5.0),), ((NOW, 0.0),),
                           "hour", "t"), "svg").decode()
    parsed = Parsed(page([snapshot()], {"prod": ChartView(svg, 1, NOW - timedelta(hours=1), NOW)}))
    assert all("src" not in attrs for _, attrs in parsed.tags)
    hrefs = {str(attrs["href"]) for _, attrs in parsed.tags if "href" in attrs}
    assert hrefs <= {"data:,", "api/status", "?span=24h", "?span=7d", "?span=30d", *(
        str(a["xlink:href"]) for a in parsed.named("use"))}
    assert all(h.startswith(("#", "?", "data:,", "api/status")) for h in hrefs)
    assert not parsed.named("link") or parsed.named("link") == [{"rel": "icon", "href": "data:,"}]
    meta = {str(a.get("name") or a.get("http-equiv")): str(a.get("content")) for a in parsed.named("meta")
            if "content" in a}
    assert meta["viewport"] == "width=device-width, initial-scale=1"
    assert meta["refresh"] == "300"
    assert meta["Content-Security-Policy"].startswith("default-src 'none';")
    assert len(parsed.named("svg")) == 1


def test_it_reloads_every_interval_but_not_faster_than_every_5s() -> None:
    assert refresh_seconds(timedelta(minutes=5)) == 300
    assert refresh_seconds(timedelta(seconds=1)) == 5
    assert 'http-equiv="refresh" content="5"' in page([snapshot()], interval=timedelta(seconds=1))


def test_a_secret_in_outside_text_is_masked() -> None:
    document = page([snapshot(text=f"upstream said: bearer {SECRET}")], scrub=Redactor([SECRET]))
    assert SECRET not in document and "***" in document


@pytest.mark.parametrize(("query", "span"), [("", "24h"), ("span=24h", "24h"), ("span=7d", "7d"),
                                             ("span=30d&x=1", "30d")])
def test_the_span_comes_from_the_query(query: str, span: str) -> None:
    assert span_from_query(query) == span


@pytest.mark.parametrize("query", ["span=1y", "span=", "span=7d&span=30d", "span=%3Cb%3E"])
def test_another_span_is_refused_naming_the_choices(query: str) -> None:
    with pytest.raises(ValueError, match="span must be one of 24h, 7d, 30d"):
        span_from_query(query)


@pytest.mark.parametrize("svg", ['<svg><script>alert(1)</script></svg>', '<svg onload="x()"></svg>',
                                 '<svg><image href="http://example.com/a.png"/></svg>',
                                 '<svg><use xlink:href="https://example.com/s.svg#a"/></svg>',
                                 '<svg><path style="fill:url(http://example.com/p)"/></svg>',
                                 '<svg><use href=x.svg#a /></svg>', '<svg><a xlink:href="#x">t</a></svg>',
                                 '<svg><style>@import "x.css";</style></svg>', '<p>not an svg</p>'])
def test_an_svg_that_runs_or_fetches_anything_is_left_out(svg: str) -> None:
    assert safe_svg(svg) is None
    document = page([snapshot()], {"prod": ChartView(svg, 1)})
    assert svg not in document and "chart unavailable" in document


def test_every_account_has_its_section_and_silences_show() -> None:
    prod = replace(snapshot("prod", "text"), silences=(Silence(7, "text", "prod", NOW - timedelta(hours=1),
                                                               NOW + timedelta(hours=2), HOSTILE),))
    document = page([prod, snapshot("dev", "text")])
    parsed = Parsed(document)
    assert [a["data-account"] for a in parsed.named("section") if "data-account" in a] == ["prod", "dev"]
    assert "<title>(2 firing) creditwatch · $42.00 left</title>" in document
    assert "silenced until <time datetime=\"2026-11-25T14:00:00Z\">" in document
    assert [a["data-silence"] for a in parsed.named("li") if "data-silence" in a] == ["7"]
    assert HOSTILE in "".join(parsed.text) and not parsed.named("script")


def test_no_reading_yet_is_said_plainly() -> None:
    empty = Snapshot(NOW, Figures(None, None, None), timedelta(hours=6), None, (), (), {})
    document = page([empty])
    assert "no reading yet" in document and "chart unavailable" in document and "none firing" in document


# --------------------------------------------------------------------------- charts, cached


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    url = f"sqlite:///{tmp_path}/cw.db"
    seed(url, datetime.now(UTC) - timedelta(minutes=1), days=3, raw_days=1)
    built = build(parse_settings(f'[database]\nurl = "{url}"\n', {}), {})
    yield built
    built.close()


class Counted:
    """The drawing the child does, done in this process (no 1.5 s start each), counting its calls."""

    def __init__(self, app: App, delay: float = 0.0) -> None:
        self.url = app.settings.database.url.get_secret_value()
        self.calls = 0
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, account: str, span: timedelta, end: datetime) -> Drawn:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        return draw(self.url, 10.0, account, span, end)


def test_the_child_draws_what_this_process_would_from_the_database_alone(app: App) -> None:
    url = app.settings.database.url.get_secret_value()
    with app.deps.sessions() as session:
        latest = store.latest_reading(session, "default")
    assert latest is not None
    end, span = latest.fetched_at, timedelta(days=2)
    here, there = draw(url, 10.0, "default", span, end), draw_in_child(url, 10.0, "default", span, end)
    assert there == here and there.points > 288 + 24  # a day of raw readings, a day of hourly rollups
    with pytest.raises(RuntimeProblem, match=r"^chart: drawing failed: database: no SQLite database at "):
        draw_in_child("sqlite:////nonexistent/folder/cw.db", 10.0, "default", span, end)


def store_reading(app: App) -> None:
    now = datetime.now(UTC)
    with app.deps.sessions.begin() as session:
        store.record_fetch(session, "default", now, FetchOutcome(FetchKind.OK, 150.0, usage_after(now, now)))


def test_a_chart_is_drawn_once_per_reading_and_span(app: App) -> None:
    drawn = Counted(app)
    pages = StatusPages(app, draw=drawn)
    first = pages.page("")
    assert first.status == 200 and b'id="chart-balance"' in first.body
    assert pages.page("").body.count(b"<svg") == 1 and drawn.calls == 1  # the second view drew nothing
    assert pages.page("span=7d").status == 200 and drawn.calls == 2
    assert pages.page("span=7d").status == 200 and drawn.calls == 2
    store_reading(app)
    assert pages.page("").status == 200 and drawn.calls == 3  # a new reading, a new chart


def test_after_a_tick_the_viewed_spans_are_drawn_ahead_without_waiting(app: App) -> None:
    drawn = Counted(app, delay=0.5)
    pages = StatusPages(app, draw=drawn)
    try:
        pages.page("span=30d")
        assert drawn.calls == 1
        store_reading(app)
        pages.tick_ended()
        assert pages.charts.renders == 1  # it returned at once: the drawing (0.5 s at least) goes on
        deadline = time.monotonic() + 30
        while pages.charts.renders < 2:  # counted once a drawing has ended
            assert time.monotonic() < deadline, "the chart of the new reading was not drawn ahead"
            time.sleep(0.05)
        pages.page("span=30d")
        assert drawn.calls == 2  # the view found it drawn
    finally:
        pages.close()


def test_views_at_the_same_time_share_one_drawing(app: App) -> None:
    drawn = Counted(app, delay=0.5)
    pages = StatusPages(app, draw=drawn)
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(pages.page("").body)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert drawn.calls == 1
    assert len(bodies) == 4 and all(b'id="chart-balance"' in body for body in bodies)


def test_a_bad_span_is_a_400_and_the_json_twin_is_status_json(app: App) -> None:
    pages = StatusPages(app, draw=Counted(app))
    bad = pages.page("span=1y")
    assert bad.status == 400 and bad.body.startswith(b"span must be one of")
    api = pages.api("")
    assert api.status == 200 and api.content_type == "application/json"
    assert b'"remaining": 44.0' in api.body and b'"accounts"' in api.body
