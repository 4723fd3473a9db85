"""The status page at `/`: one self-contained HTML document from the snapshots and each
account's chart (an SVG string). Pure: values in, text out.

Self-contained means that a browser opening it makes no other request: the CSS is inline,
the fonts are the system's, the chart is inline SVG (its text drawn as outlines), and there
is no script. Every text that came from outside (account, rule and key names, messages,
fetch and channel errors) is HTML-escaped; nothing on the page is a secret (the snapshot
holds none: key labels are the API's masked ones, key ids are digests).

The figures carry `data-field` attributes and each account's section `data-account`, so
that a test (or a scraper) can read them without parsing the prose around them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

from worker.domain import FetchRecord, KeyRecord
from worker.formatting import format_duration, hours_text, iso, money, rate
from worker.sendpolicy import Backlog
from worker.snapshot import AlertView, Snapshot
from worker.text import escape_controls

# The spans the chart offers, shortest first; the page opens on the first.
SPANS: dict[str, timedelta] = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
DEFAULT_SPAN = "24h"
TOP_KEYS = 5  # the keys that spent the most today, as `status` lists them
MIN_REFRESH = timedelta(seconds=5)  # a 1 s interval would reload the page under the reader's eyes


def span_from_query(query: str) -> str:
    """The chart span a query string asks for (`span=7d`), the default when it asks for none;
    ValueError naming the accepted spans otherwise."""
    asked = parse_qs(query, keep_blank_values=True).get("span", [DEFAULT_SPAN])
    if len(asked) != 1 or asked[0] not in SPANS:
        msg = f"span must be one of {', '.join(SPANS)}"
        raise ValueError(msg)
    return asked[0]


@dataclass(frozen=True, slots=True)
class ChartView:
    """One account's chart as the page shows it: the SVG, or why there is none."""

    svg: str | None
    points: int = 0  # balance points drawn (readings, or rollup points past the raw data)
    start: datetime | None = None
    end: datetime | None = None
    problem: str = ""  # why there is no SVG ("" with svg None: no reading yet)


def _same(text: str) -> str:
    return text


@dataclass(frozen=True)
class PageView:
    """Everything one rendering of the page needs."""

    snapshots: Sequence[Snapshot]
    charts: Mapping[str, ChartView]  # by account
    span: str
    channels: Sequence[str]  # every configured channel, in settings order
    interval: timedelta
    version: str
    scrub: Callable[[str], str] = field(default=_same)  # masks any secret in outside text


def refresh_seconds(interval: timedelta) -> int:
    """How often the page reloads itself: every interval, but not more often than MIN_REFRESH."""
    return max(1, round(max(interval, MIN_REFRESH).total_seconds()))


def render_page(view: PageView) -> str:
    """The whole HTML document."""
    first = view.snapshots[0]
    firing = sum(len(s.firing) for s in view.snapshots)
    title = "creditwatch" + (f" · {money(first.latest.remaining)} left" if first.latest else "")
    title = (f"({firing} firing) " if firing else "") + title
    body = [_header(view), *(_account(view, snap) for snap in view.snapshots), _outbox(view), _footer(view)]
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<meta http-equiv=\"refresh\" content=\"{refresh_seconds(view.interval)}\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_POLICY}\">"
        "<link rel=\"icon\" href=\"data:,\">"  # or the browser asks the server for /favicon.ico
        f"<title>{_esc(view, title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


# -- parts ----------------------------------------------------------------------------------------


def _header(view: PageView) -> str:
    now = view.snapshots[0].now
    return (f"<header><h1>creditwatch</h1><p class=\"muted\">as of {_time(now, 'now')}"
            f" · reloads every {format_duration(timedelta(seconds=refresh_seconds(view.interval)))}"
            " · <a href=\"api/status\">JSON</a></p></header>")


def _account(view: PageView, snap: Snapshot) -> str:
    name = _esc(view, snap.account)
    parts = [f"<section class=\"account\" data-account=\"{name}\">", f"<h2>{name}</h2>",
             _figures(view, snap), _alerts(view, snap), _chart(view, snap.account), _keys(view, snap.keys),
             "</section>"]
    return "\n".join(p for p in parts if p)


def _figures(view: PageView, snap: Snapshot) -> str:
    r, f = snap.latest, snap.figures
    window = format_duration(snap.window)
    balance = _value("remaining", money(r.remaining) if r else "no reading yet",
                     f"of {money(r.total_credits)}, {money(r.total_usage)} used; read "
                     f"{_time(r.fetched_at, 'fetched_at')}" if r else "")
    burn = _value("burn_rate", rate(f.burn_per_hour) if f.burn_per_hour is not None else "unknown",
                  f"over {window}" if f.burn_per_hour is not None else f"needs two readings in {window}")
    runway = _value("runway", hours_text(f.runway_hours) if f.runway_hours is not None else "unknown",
                    "at this burn rate" if f.runway_hours is not None else "")
    fetch_text, fetch_note, bad = _fetch(view, snap.last_fetch)
    fetch = _value("last_fetch", fetch_text, fetch_note, "bad" if bad else "")
    return (f"<dl class=\"figures\"><div><dt>Balance</dt>{balance}</div><div><dt>Burn rate</dt>{burn}</div>"
            f"<div><dt>Runway</dt>{runway}</div><div><dt>Last fetch</dt>{fetch}</div></dl>")


def _time(at: datetime, name: str = "") -> str:
    """A UTC time as people read it, with the exact ISO 8601 form as its `datetime`."""
    field = f" data-field=\"{name}\"" if name else ""
    return f"<time{field} datetime=\"{iso(at)}\">{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC</time>"


def _value(name: str, shown: str, note: str, css: str = "") -> str:
    # `shown` and `note` are made of our own formatting and escaped outside text only.
    klass = f" class=\"{css}\"" if css else ""
    extra = f"<dd class=\"muted\">{note}</dd>" if note else ""
    return f"<dd data-field=\"{name}\"{klass}>{shown}</dd>{extra}"


def _fetch(view: PageView, last: FetchRecord | None) -> tuple[str, str, bool]:
    if last is None:
        return "never", "", False
    if last.ok:
        return "ok", _time(last.at), False
    return "failed", f"{_time(last.at)}: {_esc(view, last.message or last.kind.value)}", True


def _alerts(view: PageView, snap: Snapshot) -> str:
    silences = _silences(view, snap)
    if not snap.firing and not snap.pending:
        return f"<h3>Alerts</h3><p class=\"ok\" data-field=\"alerts\">none firing</p>{silences}"
    items = [_alert(view, snap, a, f"since {_when(a.since)}") for a in snap.firing]
    items += [_alert(view, snap, a, f"pending since {_when(a.since)}, fires at {_when(a.fires_at)} if it "
                                    "still holds") for a in snap.pending]
    count = f"{len(snap.firing)} firing" + (f", {len(snap.pending)} pending" if snap.pending else "")
    return (f"<h3>Alerts</h3><p data-field=\"alerts\">{count}</p><ul class=\"alerts\">{''.join(items)}</ul>"
            f"{silences}")


def _alert(view: PageView, snap: Snapshot, a: AlertView, when: str) -> str:
    severity = a.severity.value
    quiet = [x for x in snap.silences if x.covers(a.rule, snap.account, snap.now)]
    if quiet:
        when += f"; silenced until {_time(max(x.ends_at for x in quiet))}"
    return (f"<li class=\"sev-{severity} {a.status.value}\" data-rule=\"{_esc(view, a.rule)}\" "
            f"data-status=\"{a.status.value}\"><b>{severity.upper()}</b> {_esc(view, a.subject)} "
            f"<span class=\"muted\">{when}</span><br>{_esc(view, a.summary)}</li>")


def _silences(view: PageView, snap: Snapshot) -> str:
    """The silences that cover this account and have not ended: their rule holds its messages back."""
    if not snap.silences:
        return ""
    rows = "".join(
        f"<li class=\"silence\" data-silence=\"{x.id}\"><b>{_esc(view, x.rule)}</b> "
        f"<span class=\"muted\">{'' if x.starts_at <= snap.now else f'from {_time(x.starts_at)} '}"
        f"until {_time(x.ends_at)}{'' if x.account else ', every account'}</span>"
        + (f"<br>{_esc(view, x.comment)}" if x.comment else "") + "</li>" for x in snap.silences)
    return f"<h3>Silences</h3><ul class=\"silences\">{rows}</ul>"


def _when(at: datetime | None) -> str:
    return _time(at) if at is not None else "?"


def _chart(view: PageView, account: str) -> str:
    nav = " ".join(f"<a href=\"?span={name}\" aria-current=\"page\">{name}</a>" if name == view.span
                   else f"<a href=\"?span={name}\">{name}</a>" for name in SPANS)
    chart = view.charts.get(account, ChartView(None))
    head = f"<h3>Balance and spend</h3><nav class=\"spans\" aria-label=\"chart span\">{nav}</nav>"
    svg = safe_svg(chart.svg) if chart.svg is not None else None
    if svg is None:
        reason = _esc(view, chart.problem) if chart.problem else "no reading in this span yet"
        return f"{head}<p class=\"muted\" data-field=\"chart\">chart unavailable: {reason}</p>"
    span = ""
    if chart.start is not None and chart.end is not None:
        span = f" from {_time(chart.start)} to {_time(chart.end)}"
    caption = f"{chart.points:,} balance point{'s' if chart.points != 1 else ''}{span}"
    return (f"{head}<figure class=\"chart\" data-points=\"{chart.points}\">{svg}"
            f"<figcaption class=\"muted\">{caption}</figcaption></figure>")


# Matched against the lowercased SVG; each starts with a literal (no alternation up front), so a
# 1 MB chart (30 days of readings a minute) is checked in about 5 ms rather than 100.
_UNSAFE_SVG = (
    re.compile(r"<\s*(?:script|foreignobject|iframe|image|feimage|a|animate|set)\b"),  # runs or loads
    re.compile(r"on[a-z]+\s*="),  # an event handler (or, harmlessly, text that looks like one)
    re.compile(r"href\s*=\s*(?:\"(?!#)|'(?!#)|[^\"'\s#])"),  # a link to anything but an #id inside
    re.compile(r"src\s*="),
    re.compile(r"url\(\s*(?:[\"'](?!#)|[^\"'\s#])"),
    re.compile(r"@import"),
)


def safe_svg(svg: str) -> str | None:
    """`svg` when it is one <svg> element that runs nothing and refers to nothing outside itself
    (only `#id` references); None otherwise. The chart comes from our own child process: this
    is a guard against a change there, not a sanitizer for arbitrary input."""
    text = svg.strip()
    if not (text.startswith("<svg") and text.endswith("</svg>")):
        return None
    low = text.lower()
    return None if any(pattern.search(low) for pattern in _UNSAFE_SVG) else text


def _keys(view: PageView, keys: Sequence[KeyRecord]) -> str:
    if not keys:
        return ""
    top = sorted(keys, key=lambda k: (-k.usage_daily, k.name, k.id))[:TOP_KEYS]
    rows = "".join(
        f"<li data-key=\"{_esc(view, k.id)}\"><b>{_esc(view, k.shown)}</b><br><span class=\"muted\">"
        f"{money(k.usage_daily)} today, {money(k.usage_monthly)} this month"
        + (f", {money(k.limit_remaining or 0.0)} of {money(k.limit)} left" if k.limit is not None else "")
        + "</span></li>" for k in top)
    shown = (f"the {len(top)} that spent the most today (UTC)" if len(keys) > len(top)
             else "most spent today (UTC) first")
    return f"<h3>Keys</h3><p class=\"muted\">{len(keys)} watched; {shown}</p><ul class=\"keys\">{rows}</ul>"


def _outbox(view: PageView) -> str:
    backlog = {b.channel: b for b in view.snapshots[0].backlog}
    names = [*view.channels, *(name for name in backlog if name not in view.channels)]
    if not names:
        return ("<section class=\"outbox\"><h2>Notifications</h2><p class=\"muted\">no channel configured: "
                "alerts show here, in <code>status</code> and in the log</p></section>")
    rows = "".join(_channel(view, name, backlog.get(name)) for name in names)
    return f"<section class=\"outbox\"><h2>Notifications</h2><ul class=\"channels\">{rows}</ul></section>"


def _channel(view: PageView, name: str, b: Backlog | None) -> str:
    shown = _esc(view, name)
    if b is None:
        return f"<li data-channel=\"{shown}\"><b>{shown}</b>: <span class=\"ok\">all delivered</span></li>"
    h = b.head
    text = f"{b.waiting} waiting, oldest {_esc(view, h.key)} ({h.status.value})"
    if h.attempts:
        text += f", tried {h.attempts} time{'s' if h.attempts != 1 else ''}"
    if h.next_try_at is not None:
        text += f", next try at {_time(h.next_try_at)}"
    if h.last_error:
        text += f"<br><span class=\"bad\">last error: {_esc(view, h.last_error)}</span>"
    return f"<li data-channel=\"{shown}\"><b>{shown}</b>: {text}</li>"


def _footer(view: PageView) -> str:
    return (f"<footer class=\"muted\">creditwatch {_esc(view, view.version)} · times in UTC · "
            "this page loads nothing from elsewhere</footer>")


def _esc(view: PageView, text: str) -> str:
    """Outside text made safe for HTML text and attribute values: secrets masked, control
    characters escaped, markup characters (quotes included) as entities."""
    return html.escape(escape_controls(view.scrub(text)), quote=True)


# The browser itself refuses to load anything (script, style sheet, font, image, frame...) from
# anywhere, this server included: the page needs nothing but its own inline CSS.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"

# Phone first: one column that never exceeds the viewport (long words and labels wrap, the
# chart scales down with its viewBox), two columns of figures from 600 px on.
_CSS = (
    "*{box-sizing:border-box}"
    "html{-webkit-text-size-adjust:100%}"
    "body{margin:0 auto;max-width:60rem;padding:0.75rem;font:16px/1.45 system-ui,-apple-system,"
    "'Segoe UI',Roboto,sans-serif;color:#1d2125;background:#fff;overflow-wrap:anywhere}"
    "h1{font-size:1.4rem;margin:0}h2{font-size:1.2rem;margin:1.2rem 0 0.4rem;"
    "border-bottom:1px solid #ddd}h3{font-size:1rem;margin:1rem 0 0.3rem}"
    "p{margin:0.3rem 0}.muted{color:#5f6b76;font-size:0.9rem}.ok{color:#1e7b34}.bad{color:#b3261e}"
    "a{color:#1f5fa8}"
    ".figures{display:grid;grid-template-columns:1fr 1fr;gap:0.5rem;margin:0}"
    ".figures div{background:#f4f6f8;border-radius:6px;padding:0.5rem}"
    ".figures dt{font-size:0.8rem;color:#5f6b76;text-transform:uppercase;letter-spacing:0.03em}"
    ".figures dd{margin:0;font-size:1.15rem;font-weight:600}"
    ".figures dd.muted{font-size:0.8rem;font-weight:400}"
    "ul{list-style:none;padding:0;margin:0.3rem 0}li{padding:0.4rem 0.5rem;margin:0.3rem 0;"
    "border-left:4px solid #ccd;background:#fafbfc}"
    ".sev-critical{border-color:#b3261e}.sev-warning{border-color:#d9822b}.sev-info{border-color:#1f5fa8}"
    "li.pending{border-style:dashed}"
    ".spans a{display:inline-block;padding:0.2rem 0.7rem;margin-right:0.3rem;border:1px solid #ccd;"
    "border-radius:1rem;text-decoration:none}.spans a[aria-current]{background:#1f5fa8;color:#fff;"
    "border-color:#1f5fa8}"
    "figure{margin:0.5rem 0}figure svg{display:block;width:100%;max-width:40rem;height:auto}"
    "code{font-size:0.9em}footer{margin-top:1.5rem}"
    "@media (min-width:600px){.figures{grid-template-columns:repeat(4,1fr)}}"
)
