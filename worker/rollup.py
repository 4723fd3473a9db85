"""Folding old readings into hourly rollups, and reading rollups back as points. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from worker.domain import Reading


@dataclass(frozen=True, slots=True)
class Rollup:
    """An hour of readings: first/last/min/max of total_credits and total_usage, and a count."""

    hour: datetime
    count: int
    first_at: datetime
    last_at: datetime
    credits_first: float
    credits_last: float
    credits_min: float
    credits_max: float
    usage_first: float
    usage_last: float
    usage_min: float
    usage_max: float

    def points(self) -> list[Reading]:
        """The first and last readings of the hour, enough for a slope across hours."""
        first = Reading(self.first_at, self.credits_first, self.usage_first)
        if self.count == 1 or self.first_at == self.last_at:
            return [first]
        return [first, Reading(self.last_at, self.credits_last, self.usage_last)]


def hour_of(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def fold(readings: Iterable[Reading], existing: Mapping[datetime, Rollup]) -> dict[datetime, Rollup]:
    """Merge readings into the rollups of their hours; returns every rollup touched."""
    out: dict[datetime, Rollup] = {}
    for r in readings:
        hour = hour_of(r.fetched_at)
        current = out.get(hour) or existing.get(hour)
        out[hour] = _single(hour, r) if current is None else _merge(current, r)
    return out


def _single(hour: datetime, r: Reading) -> Rollup:
    c, u = r.total_credits, r.total_usage
    return Rollup(hour, 1, r.fetched_at, r.fetched_at, c, c, c, c, u, u, u, u)


def _merge(roll: Rollup, r: Reading) -> Rollup:
    c, u = r.total_credits, r.total_usage
    merged = replace(
        roll, count=roll.count + 1,
        credits_min=min(roll.credits_min, c), credits_max=max(roll.credits_max, c),
        usage_min=min(roll.usage_min, u), usage_max=max(roll.usage_max, u),
    )
    if r.fetched_at < roll.first_at:
        merged = replace(merged, first_at=r.fetched_at, credits_first=c, usage_first=u)
    if r.fetched_at >= roll.last_at:
        merged = replace(merged, last_at=r.fetched_at, credits_last=c, usage_last=u)
    return merged
