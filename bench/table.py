"""A measured figure beside its target, and the one table that prints them all."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MB = 1_000_000  # decimal megabytes: the stricter reading of the targets' "MB"


@dataclass(frozen=True)
class Figure:
    """One row of the table; every target is an upper bound (value <= target)."""

    name: str
    value: float | None  # None: the measurement itself failed (see note)
    target: float
    unit: str
    runs: int
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.value is not None and self.value <= self.target


def median(samples: Iterable[float]) -> float:
    values = list(samples)
    if not values:
        msg = "no samples to take a median of"
        raise ValueError(msg)
    return statistics.median(values)


def quantity(value: float | None, unit: str) -> str:
    """A value in its unit with a precision that suits the unit."""
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.2f} {unit}"


def render_table(figures: Sequence[Figure]) -> str:
    """A fixed-width table, then one numbered note per row that has one."""
    header = ("#", "figure", "median", "target", "runs", "result")
    rows = [
        (str(i), f.name, quantity(f.value, f.unit), "<= " + quantity(f.target, f.unit),
         str(f.runs), "pass" if f.passed else "FAIL")
        for i, f in enumerate(figures, 1)
    ]
    widths = [max(len(r[c]) for r in (header, *rows)) for c in range(len(header))]
    aligns = ("<", "<", ">", ">", ">", "<")
    lines = [_row(header, widths, aligns), _rule(widths)]
    lines += [_row(r, widths, aligns) for r in rows]
    lines.append(_rule(widths))
    lines += [f"[{i}] {f.note}" for i, f in enumerate(figures, 1) if f.note]
    return "\n".join(lines)


def _row(cells: Sequence[str], widths: Sequence[int], aligns: Sequence[str]) -> str:
    return "  ".join(f"{c:{a}{w}}" for c, w, a in zip(cells, widths, aligns, strict=True)).rstrip()


def _rule(widths: Sequence[int]) -> str:
    return "  ".join("-" * w for w in widths)
