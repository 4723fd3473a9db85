"""`creditwatch chart` through the real CLI, over a stored history with rollups: PNG and SVG
files checked for size, dimensions and one balance point per stored reading in the span;
a wrong extension is a usage error (64), an unwritable path a runtime failure (1)."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Cli
from fakes import FakeOpenRouter, make_settings
from history import seed, stored

KEY = "sk-or-v1-e2e-chart-0014"
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def config(tmp_path: Path, fake_api: FakeOpenRouter) -> Path:
    # The history ends 2.5 minutes ago on a 5-minute grid, so the start of a window that ends
    # at the command's own clock falls between two readings, whatever second it runs.
    seed(f"sqlite:///{tmp_path}/cw.db", datetime.now(UTC) - timedelta(seconds=150))
    return make_settings(tmp_path, fake_api)


def png_size(image: bytes) -> tuple[int, int]:
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and image[12:16] == b"IHDR"
    width, height = struct.unpack(">II", image[16:24])
    return int(width), int(height)


def balance_vertices(svg: bytes) -> int:
    """Vertices of the balance line, `#chart-balance > path` (one per point: no simplification)."""
    root = ET.fromstring(svg)
    (group,) = [g for g in root.iter(f"{SVG}g") if g.get("id") == "chart-balance"]
    path = group.find(f"{SVG}path")
    assert path is not None
    return sum(part[:1] in ("M", "L") for part in (path.get("d") or "").split())


def expected(tmp_path: Path, since: timedelta) -> int:
    now = datetime.now(UTC)
    return len(stored(f"sqlite:///{tmp_path}/cw.db", now - since, now))


def test_chart_writes_a_png_of_at_least_800x400(cli: Cli, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "balance.png"
    done = cli(config, "chart", "--output", str(out), key=False)
    assert done.code == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.startswith(f"wrote {out}: 1200x600 px PNG")
    image = out.read_bytes()
    width, height = png_size(image)
    assert width >= 800 and height >= 400
    assert 20_000 < len(image) < 2_000_000
    assert f"{expected(tmp_path, timedelta(days=30)):,} readings over 30d" in done.stdout


@pytest.mark.parametrize(("since", "span"), [("24h", timedelta(hours=24)), ("7d", timedelta(days=7))])
def test_chart_writes_an_svg_with_one_point_per_stored_reading(cli: Cli, config: Path, tmp_path: Path,
                                                               since: str, span: timedelta) -> None:
    out = tmp_path / "balance.svg"
    done = cli(config, "chart", "--since", since, "--output", str(out), key=False)
    assert done.code == 0, done.stderr
    count = expected(tmp_path, span)
    assert balance_vertices(out.read_bytes()) == count
    assert done.stdout.strip().endswith(f"{count:,} readings over {since}")
    root = ET.fromstring(out.read_bytes())
    assert (root.get("width"), root.get("height")) == ("420", "300")
    if since == "7d":  # 3 days of raw readings, then the first and last reading of each hour
        assert count > 3 * 288 + 4 * 24


@pytest.mark.parametrize("name", ["balance.jpg", "balance", "balance.svg.txt"])
def test_another_extension_is_a_usage_error(cli: Cli, config: Path, tmp_path: Path, name: str) -> None:
    done = cli(config, "chart", "--output", str(tmp_path / name), key=False)
    assert done.code == 64
    assert done.stderr.count("\n") == 1 and "must end in .png or .svg" in done.stderr
    assert not (tmp_path / name).exists()


def test_an_unwritable_path_is_one_line_and_exit_1(cli: Cli, config: Path, tmp_path: Path) -> None:
    target = tmp_path / "no-such-folder" / "balance.png"
    done = cli(config, "chart", "--output", str(target), key=False)
    assert done.code == 1
    assert done.stderr.count("\n") == 1 and f"cannot write {target}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "says"), [(["--since", "soon"], "--since"),
                                            (["--since", "0s"], "--since"),
                                            (["--account", "nope"], "no account named 'nope'")])
def test_a_bad_option_is_a_usage_error(cli: Cli, config: Path, tmp_path: Path, args: list[str],
                                       says: str) -> None:
    done = cli(config, "chart", *args, "--output", str(tmp_path / "c.png"), key=False)
    assert done.code == 64 and says in done.stderr and done.stderr.count("\n") == 1


def test_chart_needs_the_output_option(cli: Cli, config: Path) -> None:
    done = cli(config, "chart", key=False)
    assert done.code == 64 and "--output" in done.stderr
