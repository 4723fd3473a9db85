"""Drawing a ChartData with matplotlib (Agg, no pyplot): PNG or self-contained SVG bytes.

Only `worker.chartrender.render` imports this module, and only when it draws: matplotlib
costs about a second and 56 MB of resident memory to import, which the long-lived
service never pays (it renders in a child process).

The SVG marks its series for anyone who counts them (tests, the status page's browser
test): the balance line is the <path> directly inside `<g id="chart-balance">`
(`#chart-balance > path`), one vertex per point, as path simplification is off; each
spend bar is `<g id="chart-spend-N">`, N from 0.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, timedelta
from typing import Any, Literal
from xml.sax.saxutils import escape

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from matplotlib.typing import RcKeyType

from worker.chart import ChartData

Format = Literal["png", "svg"]

BALANCE_ID = "chart-balance"
SPEND_ID = "chart-spend-"
EMPTY_ID = "chart-empty"
EMPTY_TEXT = "No readings in this span"

# PNG: 150 dpi, so 1200 px is 8 in and 10 pt text is 21 px: easy to read in an email.
# SVG: matplotlib lays it out at 72 units per inch; the root's "pt" become CSS px below,
# so text keeps its point size as pixels at the drawn width (11 px, about 10 at 390 px wide).
_DPI: dict[Format, int] = {"png": 150, "svg": 72}
_FONT_SIZE: dict[Format, float] = {"png": 10.0, "svg": 11.0}
_RC: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans",  # shipped inside matplotlib: the same glyphs on every machine
    "svg.fonttype": "path",  # text as outlines: the SVG needs no font from anywhere
    "svg.hashsalt": "creditwatch",  # fixed ids, so the same chart gives the same bytes
    "path.simplify": False,  # keep one vertex per reading
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
}
_BALANCE_COLOR = "#1f5fa8"
_SPEND_COLOR = "#d9822b"
# Metadata matplotlib would write: a creation date (different every run) and its name.
_PNG_META: dict[str, str | None] = {"Software": None}
_SVG_META: dict[str, str | None] = {"Date": None, "Creator": None, "Format": None, "Type": None}


def draw(data: ChartData, fmt: Format, width_px: int, height_px: int) -> bytes:
    """The chart as PNG or SVG bytes of about width_px x height_px; the same input gives the same bytes."""
    dpi = _DPI[fmt]
    with rc_context({**_RC, "font.size": _FONT_SIZE[fmt]}):
        figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
        figure.suptitle(data.title, fontsize="medium", fontweight="bold")
        if data.points:
            _draw_series(figure, data, width_px / dpi)
        else:
            _draw_empty(figure)
        out = io.BytesIO()
        figure.savefig(out, format=fmt, dpi=dpi, metadata=_PNG_META if fmt == "png" else _SVG_META)
    raw = out.getvalue()
    return _standalone_svg(raw, data) if fmt == "svg" else raw


def _draw_series(figure: Figure, data: ChartData, width_in: float) -> None:
    balance, spend = figure.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    _draw_balance(balance, data)
    _draw_spend(spend, data)
    # At most about one date label per inch, so they never overlap on a narrow chart.
    locator = AutoDateLocator(tz=UTC, minticks=3, maxticks=max(4, int(width_in)))
    spend.xaxis.set_major_locator(locator)
    spend.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))
    spend.set_xlim(float(date2num(data.start)), float(date2num(data.end)))
    spend.set_xlabel("time (UTC)", fontsize="small")


def _draw_balance(axes: Axes, data: ChartData) -> None:
    xs = [float(date2num(at)) for at, _ in data.points]
    ys = [value for _, value in data.points]
    # A lone reading draws no line: a dot shows it (inside the same group, after the path).
    marker = "o" if len(xs) == 1 else ""
    axes.plot(xs, ys, color=_BALANCE_COLOR, linewidth=1.4, marker=marker, gid=BALANCE_ID)
    axes.set_ylabel("remaining", fontsize="small")
    axes.yaxis.set_major_formatter(FuncFormatter(_usd_tick))


def _draw_spend(axes: Axes, data: ChartData) -> None:
    width = timedelta(hours=1) if data.bucket == "hour" else timedelta(days=1)
    lefts = [float(date2num(at)) for at, _ in data.spend]
    heights = [usd for _, usd in data.spend]
    bars = axes.bar(lefts, heights, width=width / timedelta(days=1), align="edge",
                    color=_SPEND_COLOR, edgecolor="white", linewidth=0.3)
    for index, bar in enumerate(bars):
        bar.set_gid(f"{SPEND_ID}{index}")
    axes.set_ylim(0, max([*heights, 0.01]) * 1.15)  # an idle span still has a sane axis
    axes.set_ylabel(f"spent per {data.bucket}", fontsize="small")
    axes.yaxis.set_major_formatter(FuncFormatter(_usd_tick))


def _draw_empty(figure: Figure) -> None:
    figure.text(0.5, 0.5, EMPTY_TEXT, ha="center", va="center", fontsize="large", color="#555555",
                gid=EMPTY_ID)


def _usd_tick(value: float, _position: float | None) -> str:
    """$1,250 / $12 / $12.50 / $0.005: cents only where the axis needs them."""
    sign, size = ("-" if value < 0 else ""), abs(value)
    if size >= 100 or size == int(size):
        text = f"{size:,.0f}"
    elif size >= 0.01:
        text = f"{size:,.2f}"
    else:
        text = f"{size:.2g}"
    return f"{sign}${text}"


_ROOT_SIZE = re.compile(rb'width="([0-9.]+)pt" height="([0-9.]+)pt"')


def _standalone_svg(raw: bytes, data: ChartData) -> bytes:
    """matplotlib's SVG from its root element on, sized in px, with a <title> and <desc>.

    The XML declaration and DOCTYPE go (the DOCTYPE names a DTD on the web, and neither
    belongs inside an HTML page); a UTF-8 SVG file needs neither.
    """
    svg = raw[raw.index(b"<svg"):]
    svg = _ROOT_SIZE.sub(rb'width="\1" height="\2"', svg, count=1)
    root_end = svg.index(b">") + 1
    label = f"<title>{escape(data.title)}</title><desc>{escape(_description(data))}</desc>"
    return svg[:root_end] + label.encode() + svg[root_end:]


def _description(data: ChartData) -> str:
    if not data.points:
        return f"{EMPTY_TEXT}."
    start, end = data.start.astimezone(UTC), data.end.astimezone(UTC)
    return (f"{len(data.points)} balance points and {len(data.spend)} spend bars, "
            f"from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC.")
