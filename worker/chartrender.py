"""Rendering the balance-and-spend chart to PNG or SVG: in this process, in a child, or to a file.

`render` draws in this process (matplotlib, imported only then): for one-shot commands
such as `creditwatch chart`. The long-lived service calls `render_in_child` instead,
which runs `python -m worker.chartrender` for one chart and lets it exit, so matplotlib
(about 56 MB resident once imported) never stays in the service's memory.

    python -m worker.chartrender png|svg [WIDTH HEIGHT] < chart.json > image

reads a chart as `worker.chart.to_json` writes it and prints the image; on failure it
exits non-zero, and the last line of its stderr says why.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from worker.chart import ChartData, build_chart, from_json, to_json
from worker.domain import Reading
from worker.errors import RuntimeProblem, UsageError
from worker.formatting import hours_text
from worker.text import escape_controls

Format = Literal["png", "svg"]

# PNG at least 800x400 (the contract), large enough to read in an email; SVG drawn at
# about a phone's width, so its text stays readable when the page scales it to 390 px.
DEFAULT_SIZE: dict[Format, tuple[int, int]] = {"png": (1200, 600), "svg": (420, 300)}
EXTENSIONS: dict[str, Format] = {".png": "png", ".svg": "svg"}
# Import (~1 s) plus a 30-day chart of 5-minute readings (~1 s), with room for a loaded machine.
CHILD_TIMEOUT = 30.0
# The child needs no secret: it gets only what finding Python, the package and a cache takes.
_CHILD_ENV = ("PATH", "PYTHONPATH", "HOME", "TMPDIR", "MPLCONFIGDIR", "LANG", "LC_ALL")


def render(data: ChartData, fmt: Format, width_px: int | None = None, height_px: int | None = None) -> bytes:
    """The chart as PNG or SVG bytes, drawn in this process; the same input gives the same bytes."""
    # matplotlib takes about a second and 56 MB to import: only a process that draws loads it.
    from worker.chartdraw import draw

    width, height = _size(fmt, width_px, height_px)
    return draw(data, fmt, width, height)


def render_in_child(data: ChartData, fmt: Format, width_px: int | None = None, height_px: int | None = None,
                    timeout: float = CHILD_TIMEOUT) -> bytes:
    """`render` in a short-lived child process, killed after `timeout` seconds; RuntimeProblem
    (one line) when it fails or runs out of time."""
    width, height = _size(fmt, width_px, height_px)
    env = {name: os.environ[name] for name in _CHILD_ENV if name in os.environ}
    command = [sys.executable, "-m", "worker.chartrender", fmt, str(width), str(height)]
    try:
        done = subprocess.run(command, input=to_json(data).encode(), capture_output=True, env=env,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        msg = f"chart: rendering took longer than {timeout:g}s"
        raise RuntimeProblem(msg) from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit {done.returncode}"]
        msg = f"chart: rendering failed: {escape_controls(lines[-1])}"
        raise RuntimeProblem(msg)
    return done.stdout


def chart_format(output: Path) -> Format:
    """PNG or SVG by the file's extension; UsageError naming the accepted ones otherwise."""
    fmt = EXTENSIONS.get(output.suffix.lower())
    if fmt is None:
        msg = f"chart: {escape_controls(str(output))}: the file name must end in .png or .svg"
        raise UsageError(msg)
    return fmt


def write_chart(readings: Iterable[Reading], now: datetime, span: timedelta, output: Path,
                account: str | None = None) -> str:
    """Render the chart of [now - span, now] to `output` (PNG or SVG by its extension), atomically;
    returns the one-line summary for stdout. UsageError for another extension, RuntimeProblem
    when the file cannot be written (nothing is left behind then)."""
    fmt = chart_format(output)
    data = build_chart(readings, now, span, account)
    image = render(data, fmt)
    _write_atomically(output, image)
    width, height = DEFAULT_SIZE[fmt]
    return (f"wrote {escape_controls(str(output))}: {width}x{height} px {fmt.upper()}, "
            f"{len(data.points):,} readings over {hours_text(span / timedelta(hours=1))}")


def _size(fmt: Format, width_px: int | None, height_px: int | None) -> tuple[int, int]:
    default_width, default_height = DEFAULT_SIZE[fmt]
    width, height = width_px or default_width, height_px or default_height
    if not (100 <= width <= 10_000 and 100 <= height <= 10_000):
        msg = f"chart size {width}x{height} px is outside 100..10000"
        raise ValueError(msg)
    return width, height


def _write_atomically(path: Path, content: bytes) -> None:
    """Write beside the target, then rename over it: a reader sees the old file or the whole new one."""
    # A fresh name opened exclusively (not mkstemp) so the file gets the umask's usual mode.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        handle = temporary.open("xb")
    except OSError as err:
        raise _cannot_write(path, err) from None
    try:
        with handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise _cannot_write(path, err) from None


def _cannot_write(path: Path, err: OSError) -> RuntimeProblem:
    return RuntimeProblem(f"chart: cannot write {escape_controls(str(path))}: {err.strerror or err}")


# --------------------------------------------------------------------------- child


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m worker.chartrender FMT [WIDTH HEIGHT]`: chart JSON on stdin, image on stdout."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 3) or args[0] not in DEFAULT_SIZE or not all(a.isdigit() for a in args[1:]):
        print("usage: python -m worker.chartrender png|svg [WIDTH HEIGHT] < chart.json", file=sys.stderr)
        return 64
    fmt: Format = "png" if args[0] == "png" else "svg"
    size = [int(a) for a in args[1:]] or [0, 0]
    try:
        image = render(from_json(sys.stdin.read()), fmt, size[0] or None, size[1] or None)
    except ValueError as err:
        print(f"bad chart: {err}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(image)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
