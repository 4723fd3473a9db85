"""Burn rate and runway from stored readings; None means unknown."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from datetime import datetime, timedelta

from worker.domain import Reading


def burn_rate(readings: Sequence[Reading], now: datetime, window: timedelta) -> float | None:
    """USD spent per hour over `window` before `now`: least-squares slope of total_usage.

    `readings` are one timeline's (the store keeps readings from before a backward step
    of the wall clock apart: on the old time base they would interleave with the new
    ones and count the same spend twice); small disorder, such as replicas whose clocks
    differ by seconds, is sorted out here. Only total_usage counts, so a top-up or
    refund (total_credits moving) is never negative or hidden burn; a drop in
    total_usage adds nothing, so the rate is never negative. Fewer than two readings
    is unknown.
    """
    since = now - window
    inside = sorted([r for r in readings if since <= r.fetched_at <= now], key=_fetched_at)
    if len(inside) < 2:
        return None
    start = inside[0].fetched_at
    xs = [(r.fetched_at - start).total_seconds() / 3600 for r in inside]
    if xs[-1] - xs[0] <= 0:
        return None
    return _slope(xs, _monotone_usage(inside))


_fetched_at = operator.attrgetter("fetched_at")


def _monotone_usage(readings: Sequence[Reading]) -> list[float]:
    """total_usage with every decrease flattened to zero spend."""
    usage = [r.total_usage for r in readings]
    spent = [max(0.0, after - before) for before, after in itertools.pairwise(usage)]
    return list(itertools.accumulate(spent, initial=0.0))


def _slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    # List comprehensions rather than generators: the same sums, term by term, in less time.
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum([(x - mx) ** 2 for x in xs])
    sxy = sum([(x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)])
    return max(0.0, sxy / sxx)


def runway_hours(remaining: float, rate: float | None) -> float | None:
    """Hours until remaining reaches zero at `rate` USD/h; unknown without a positive burn."""
    if rate is None or rate <= 0:
        return None
    return max(0.0, remaining) / rate


def covered(readings: Sequence[Reading], now: datetime, window: timedelta) -> timedelta:
    """How much of `window` before `now` the readings span (first to last inside it)."""
    inside = [r.fetched_at for r in readings if now - window <= r.fetched_at <= now]
    return max(inside) - min(inside) if len(inside) > 1 else timedelta(0)
