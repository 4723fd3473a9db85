"""The balance-and-spend chart: its data (pure, property tests) and its PNG and SVG files."""

from __future__ import annotations

import itertools
import json
import re
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.chart import (
    ChartData,
    bucket_for,
    bucket_start,
    build_chart,
    from_json,
    spend_per_bucket,
    to_json,
)
from worker.chartrender import chart_format, render, render_in_child, write_chart
from worker.domain import Reading
from worker.errors import RuntimeProblem, UsageError
from worker.rollup import fold

FAST = settings(max_examples=200, deadline=None)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
SVG = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
REPO = Path(__file__).resolve().parent.parent


def realistic(days: float, every: timedelta = timedelta(minutes=5)) -> list[Reading]:
    """Readings up to NOW: a steady trickle, a burst of spend, then a $40 top-up."""
    n = int(timedelta(days=days) / every)
    out, credits, usage = [], 50.0, 10.0
    for i in range(n):
        usage += 0.004 + (0.25 if n * 0.4 < i < n * 0.45 else 0.0)
        if i == int(n * 0.7):
            credits += 40.0
        out.append(Reading(NOW - (n - 1 - i) * every, credits, usage))
    return out


def increases(readings: Sequence[Reading]) -> float:
    ordered = sorted(readings, key=lambda r: r.fetched_at)
    return sum(max(0.0, b.total_usage - a.total_usage) for a, b in itertools.pairwise(ordered))


# --------------------------------------------------------------------------- data: properties

times = st.integers(min_value=-5 * 86400, max_value=86400).map(lambda s: NOW + timedelta(seconds=s))
money = st.floats(min_value=0, max_value=1e6, allow_nan=False)
readings_st = st.lists(st.builds(Reading, times, money, money), max_size=60)
spans = st.sampled_from([H, 24 * H, 48 * H, 48 * H + timedelta(seconds=1), 3 * D, 7 * D, 30 * D])


def inside(readings: Sequence[Reading], span: timedelta) -> list[Reading]:
    return [r for r in readings if NOW - span <= r.fetched_at <= NOW]


@FAST
@given(readings_st, spans)
def test_spend_is_never_negative(readings: list[Reading], span: timedelta) -> None:
    assert all(usd >= 0 for _, usd in build_chart(readings, NOW, span).spend)


@FAST
@given(readings_st, spans)
def test_total_spend_is_the_sum_of_usage_increases(readings: list[Reading], span: timedelta) -> None:
    total = sum(usd for _, usd in build_chart(readings, NOW, span).spend)
    assert total == pytest.approx(increases(inside(readings, span)), rel=1e-9, abs=1e-6)


@FAST
@given(readings_st, spans)
def test_one_point_per_reading_in_the_span_in_time_order(readings: list[Reading], span: timedelta) -> None:
    data = build_chart(readings, NOW, span)
    expected = sorted(inside(readings, span), key=lambda r: r.fetched_at)
    assert [at for at, _ in data.points] == [r.fetched_at for r in expected]
    assert sorted(v for _, v in data.points) == sorted(r.remaining for r in expected)


@FAST
@given(readings_st, spans)
def test_buckets_are_aligned_contiguous_and_cover_the_readings(readings: list[Reading],
                                                                span: timedelta) -> None:
    data = build_chart(readings, NOW, span)
    starts = [at for at, _ in data.spend]
    step = H if data.bucket == "hour" else D
    assert all(b - a == step for a, b in itertools.pairwise(starts))
    assert all(at.minute == at.second == at.microsecond == 0 for at in starts)
    if data.bucket == "day":
        assert all(at.hour == 0 for at in starts)
    if data.points:
        assert starts[0] == bucket_start(data.points[0][0], data.bucket)
        assert starts[-1] == bucket_start(data.points[-1][0], data.bucket)
    else:
        assert starts == []


@FAST
@given(readings_st, spans)
def test_json_round_trip_is_exact(readings: list[Reading], span: timedelta) -> None:
    data = build_chart(readings, NOW, span, account="ops")
    assert from_json(to_json(data)) == data


# --------------------------------------------------------------------------- data: cases


def at(hours_ago: float, usage: float, credits: float = 100.0) -> Reading:
    return Reading(NOW - timedelta(hours=hours_ago), credits, usage)


def test_a_top_up_is_never_negative_spend() -> None:
    readings = [at(3, 10.0, credits=20.0), at(2, 11.0, credits=20.0), at(1, 11.0, credits=70.0)]
    data = build_chart(readings, NOW, 24 * H)
    assert [v for _, v in data.points] == [10.0, 9.0, 59.0]
    assert sum(usd for _, usd in data.spend) == pytest.approx(1.0)
    assert min(usd for _, usd in data.spend) == 0.0


def test_a_drop_in_usage_adds_nothing() -> None:
    readings = [at(3, 10.0), at(2, 4.0), at(1, 5.0)]  # a reset of total_usage, then $1 spent
    assert sum(usd for _, usd in build_chart(readings, NOW, 24 * H).spend) == pytest.approx(1.0)


def test_an_increase_is_spent_in_the_hour_it_was_seen() -> None:
    readings = [Reading(NOW - 2 * H + timedelta(minutes=50), 100.0, 1.0),
                Reading(NOW - H + timedelta(minutes=10), 100.0, 4.0)]
    assert spend_per_bucket(readings, "hour") == ((NOW - 2 * H, 0.0), (NOW - H, 3.0))


def test_buckets_are_utc_hours_and_days_whatever_the_offset() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    seen = datetime(2026, 11, 25, 10, 40, tzinfo=india)  # 05:10 UTC
    assert bucket_start(seen, "hour") == datetime(2026, 11, 25, 5, 0, tzinfo=UTC)
    early = datetime(2026, 11, 25, 2, 0, tzinfo=india)  # 20:30 UTC the day before
    assert bucket_start(early, "day") == datetime(2026, 11, 24, tzinfo=UTC)


@pytest.mark.parametrize(("span", "bucket"), [(H, "hour"), (24 * H, "hour"), (48 * H, "hour"),
                                              (48 * H + timedelta(seconds=1), "day"), (7 * D, "day"),
                                              (30 * D, "day")])
def test_hourly_bars_up_to_48h_daily_beyond(span: timedelta, bucket: str) -> None:
    assert bucket_for(span) == bucket


def test_the_span_is_inclusive_and_ends_now() -> None:
    readings = [at(24, 1.0), at(24.01, 0.0), at(0, 2.0), at(-0.01, 9.0)]
    assert len(build_chart(readings, NOW, 24 * H).points) == 2


def test_rollup_points_past_the_raw_data_are_points_like_any_reading() -> None:
    old = [Reading(NOW - 10 * D + i * timedelta(minutes=5), 100.0, 10.0 + 0.01 * i) for i in range(288)]
    rollups = fold(old, {})
    points = [p for hour in sorted(rollups) for p in rollups[hour].points()]
    data = build_chart(points, NOW, 30 * D)
    assert len(data.points) == 2 * 24  # first and last of each hour
    assert sum(usd for _, usd in data.spend) == pytest.approx(old[-1].total_usage - old[0].total_usage)


def test_the_title_names_the_bucket_span_and_account() -> None:
    assert build_chart([], NOW, 24 * H).title == "Remaining balance and spend per hour, last 24h"
    assert build_chart([], NOW, 30 * D, account="team\nb").title == (
        "Remaining balance and spend per day (team\\nb), last 30d")


def test_an_empty_span_gives_empty_series() -> None:
    data = build_chart([at(100, 1.0)], NOW, 24 * H)
    assert (data.points, data.spend) == ((), ())


def test_a_span_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        build_chart([], NOW, timedelta(0))


@pytest.mark.parametrize("change", [
    lambda d: d.update(points=[["2026-11-25T10:00:00+00:00", float("nan")]]),
    lambda d: d.update(points=[["2026-11-25T10:00:00+00:00", True]]),
    lambda d: d.update(points=[["2026-11-25T10:00:00", 1.0]]),
    lambda d: d.update(bucket="week"),
    lambda d: d.pop("title"),
    lambda d: d.update(spend=[["2026-11-25T10:00:00+00:00"]]),
])
def test_a_bad_chart_document_is_a_value_error(change: Callable[[dict[str, object]], object]) -> None:
    doc = json.loads(to_json(build_chart([at(1, 1.0), at(0, 2.0)], NOW, 24 * H)))
    change(doc)
    with pytest.raises(ValueError):
        from_json(json.dumps(doc))


@pytest.mark.parametrize(("name", "fmt"), [("c.png", "png"), ("C.PNG", "png"), ("dir/c.svg", "svg")])
def test_the_format_follows_the_extension(name: str, fmt: str) -> None:
    assert chart_format(Path(name)) == fmt


@pytest.mark.parametrize("name", ["chart.jpg", "chart", "chart.png.txt", "chart.svgz"])
def test_another_extension_is_a_usage_error_naming_the_accepted_ones(name: str) -> None:
    with pytest.raises(UsageError) as caught:
        chart_format(Path(name))
    message = str(caught.value)
    assert "\n" not in message and ".png" in message and ".svg" in message and name in message


# --------------------------------------------------------------------------- files


def png_size(image: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which a PNG must start with."""
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", image[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", image[16:24])
    return width, height


def svg_root(image: bytes) -> ET.Element:
    return ET.fromstring(image)


def by_id(root: ET.Element, prefix: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("id", "").startswith(prefix)]


def balance_vertices(root: ET.Element) -> int:
    """Vertices of the balance line: the coordinate pairs of the path directly in its group
    (`#chart-balance > path`; a lone reading's dot is defined and used below it)."""
    (group,) = by_id(root, "chart-balance")
    paths = group.findall(f"{SVG}path")
    assert len(paths) == 1
    path = paths[0]
    numbers = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", path.get("d", ""))
    commands = re.findall(r"[MLmlHhVvCcSsQqTtAaZz]", path.get("d", ""))
    assert len(numbers) == 2 * len(commands)  # only M and L, one pair each
    return len(commands)


def assert_self_contained(image: bytes) -> None:
    """Nothing in the SVG loads from elsewhere: no script, no external link, font or stylesheet."""
    root = svg_root(image)
    for element in root.iter():
        tag = element.tag.rpartition("}")[2]
        assert tag not in ("script", "foreignObject", "image", "iframe"), tag
        for name, value in element.attrib.items():
            if name.rpartition("}")[2] == "href":
                assert value.startswith("#"), (name, value)
            for target in re.findall(r"url\(([^)]*)\)", value):
                assert target.strip("'\" ").startswith("#"), value
            assert not name.startswith("on"), name  # no event handlers either
        if tag == "style":
            assert "@import" not in (element.text or "") and "@font-face" not in (element.text or "")
    text = re.sub(r'xmlns(:\w+)?="[^"]*"', "", image.decode())  # namespace names are not links
    for needle in ("http:", "https:", "//", "@import", "<script", "<!DOCTYPE"):
        assert needle not in text, needle


@pytest.fixture(scope="module")
def three_days() -> list[Reading]:
    return realistic(3)


@pytest.fixture(scope="module")
def images(three_days: list[Reading]) -> dict[str, tuple[ChartData, bytes]]:
    """One render per format and span, shared by the file checks."""
    out = {}
    for span_name, span in (("3d", 3 * D), ("24h", 24 * H)):
        data = build_chart(three_days, NOW, span)
        for fmt in ("png", "svg"):
            out[f"{span_name}.{fmt}"] = (data, render(data, "png" if fmt == "png" else "svg"))
    return out


@pytest.mark.parametrize("key", ["3d.png", "24h.png"])
def test_png_is_at_least_800x400_and_of_a_sane_size(images: dict[str, tuple[ChartData, bytes]],
                                                     key: str) -> None:
    _, image = images[key]
    width, height = png_size(image)
    assert width >= 800 and height >= 400
    assert (width, height) == (1200, 600)
    assert 5_000 < len(image) < 1_000_000


@pytest.mark.parametrize("key", ["3d.svg", "24h.svg"])
def test_svg_has_one_vertex_per_reading_and_one_bar_per_bucket(images: dict[str, tuple[ChartData, bytes]],
                                                               key: str) -> None:
    data, image = images[key]
    root = svg_root(image)
    assert balance_vertices(root) == len(data.points)
    assert len(by_id(root, "chart-spend-")) == len(data.spend)
    assert 1_000 < len(image) < 2_000_000


def test_the_counts_match_the_readings_in_the_span(images: dict[str, tuple[ChartData, bytes]],
                                                   three_days: list[Reading]) -> None:
    assert len(images["3d.svg"][0].points) == len(three_days) == 864
    # The span's edges are inclusive: readings from 12:00 yesterday to 12:00 today, both included.
    assert len(images["24h.svg"][0].points) == 24 * 12 + 1
    assert len(images["24h.svg"][0].spend) == 25  # hours 12:00 yesterday .. 12:00 today
    assert len(images["3d.svg"][0].spend) == 4  # days: the 22nd (from 12:05) .. the 25th


@pytest.mark.parametrize("key", ["3d.svg", "24h.svg"])
def test_svg_is_self_contained_xml_sized_in_px_with_a_title(images: dict[str, tuple[ChartData, bytes]],
                                                             key: str) -> None:
    data, image = images[key]
    assert_self_contained(image)
    root = svg_root(image)
    assert root.tag == f"{SVG}svg"
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == ("420", "300", "0 0 420 300")
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == data.title


def test_the_same_chart_gives_the_same_bytes(images: dict[str, tuple[ChartData, bytes]]) -> None:
    data, _ = images["24h.svg"]
    assert render(data, "svg") == images["24h.svg"][1]
    assert render(data, "png") == images["24h.png"][1]


def test_an_empty_span_draws_a_clear_message_rather_than_failing(three_days: list[Reading]) -> None:
    data = build_chart(three_days, NOW - 10 * D, 24 * H)
    assert data.points == ()
    png = render(data, "png")
    assert png_size(png) == (1200, 600)
    svg = render(data, "svg")
    assert_self_contained(svg)
    root = svg_root(svg)
    assert by_id(root, "chart-balance") == [] and by_id(root, "chart-spend-") == []
    assert len(by_id(root, "chart-empty")) == 1
    desc = root.find(f"{SVG}desc")
    assert desc is not None and "No readings in this span" in (desc.text or "")


def test_a_single_reading_is_one_vertex_and_a_visible_dot() -> None:
    data = build_chart([at(1, 5.0)], NOW, 24 * H)
    root = svg_root(render(data, "svg"))
    assert balance_vertices(root) == 1
    (group,) = by_id(root, "chart-balance")
    assert len(list(group.iter(f"{SVG}use"))) == 1  # the marker


def test_a_render_in_a_child_gives_the_same_bytes_without_loading_matplotlib_here() -> None:
    script = (
        "import sys\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from worker.chart import build_chart\n"
        "from worker.chartrender import render_in_child\n"
        "from worker.domain import Reading\n"
        "now = datetime(2026, 11, 25, 12, tzinfo=UTC)\n"
        "readings = [Reading(now - timedelta(minutes=5 * i), 100.0, 50.0 - i / 10) for i in range(50)]\n"
        "image = render_in_child(build_chart(readings, now, timedelta(hours=24)), 'svg')\n"
        "sys.stdout.buffer.write(image)\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported by the parent'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=REPO, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr.decode()
    readings = [Reading(NOW - timedelta(minutes=5 * i), 100.0, 50.0 - i / 10) for i in range(50)]
    assert done.stdout == render(build_chart(readings, NOW, 24 * H), "svg")


def test_a_child_that_runs_out_of_time_is_a_runtime_problem() -> None:
    data = build_chart(realistic(1), NOW, 24 * H)
    started = time.monotonic()
    with pytest.raises(RuntimeProblem, match=r"took longer than 0\.05s"):
        render_in_child(data, "png", timeout=0.05)
    assert time.monotonic() - started < 10


def test_the_child_rejects_a_bad_document_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "worker.chartrender", "svg"], input=b'{"span_seconds": 1}',
                          capture_output=True, cwd=REPO, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().strip().startswith("bad chart:")
    assert len(done.stderr.decode().strip().splitlines()) == 1


# --------------------------------------------------------------------------- write_chart


@pytest.mark.parametrize(("name", "expected"), [
    ("chart.png", "1200x600 px PNG, 864 readings over 3d"),
    ("chart.svg", "420x300 px SVG, 864 readings over 3d"),
])
def test_write_chart_writes_the_file_and_says_so(tmp_path: Path, three_days: list[Reading], name: str,
                                                 expected: str) -> None:
    output = tmp_path / name
    summary = write_chart(three_days, NOW, 3 * D, output)
    assert summary == f"wrote {output}: {expected}"
    assert output.read_bytes() == render(build_chart(three_days, NOW, 3 * D), chart_format(output))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_write_chart_replaces_an_existing_file_whole(tmp_path: Path, three_days: list[Reading]) -> None:
    output = tmp_path / "chart.svg"
    output.write_bytes(b"x" * 5_000_000)
    write_chart(three_days, NOW, 24 * H, output)
    assert output.read_bytes().startswith(b"<svg") and output.stat().st_size < 5_000_000


def test_a_wrong_extension_writes_nothing(tmp_path: Path, three_days: list[Reading]) -> None:
    with pytest.raises(UsageError, match=r"\.png or \.svg"):
        write_chart(three_days, NOW, 3 * D, tmp_path / "chart.jpg")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_target_leaves_nothing_behind(tmp_path: Path, three_days: list[Reading]) -> None:
    taken = tmp_path / "chart.png"
    taken.mkdir()  # a directory where the file should go: the rename fails after the write
    (taken / "keep").write_text("mine")
    with pytest.raises(RuntimeProblem, match="cannot write") as caught:
        write_chart(three_days, NOW, 3 * D, taken)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.png"]
    assert [p.name for p in taken.iterdir()] == ["keep"]


def test_a_missing_folder_is_a_runtime_problem(tmp_path: Path, three_days: list[Reading]) -> None:
    with pytest.raises(RuntimeProblem, match="cannot write"):
        write_chart(three_days, NOW, 3 * D, tmp_path / "nowhere" / "chart.svg")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a month of readings


def test_a_30_day_chart_of_5_minute_readings(record_property: Callable[[str, object], None]) -> None:
    """8,640 points: counted in the SVG; the render times are reported, not asserted."""
    data = build_chart(realistic(30), NOW, 30 * D)
    assert len(data.points) == 8640
    timings = {}
    for fmt in ("png", "svg"):
        started = time.perf_counter()
        image = render(data, "png" if fmt == "png" else "svg")
        timings[fmt] = time.perf_counter() - started
        record_property(f"render_30d_{fmt}_seconds", round(timings[fmt], 3))
        record_property(f"render_30d_{fmt}_bytes", len(image))
        if fmt == "svg":
            root = svg_root(image)
            assert balance_vertices(root) == 8640
            assert len(by_id(root, "chart-spend-")) == len(data.spend) == 31
    print(f"30 days of 5-minute readings: png {timings['png']:.2f}s, svg {timings['svg']:.2f}s")
