"""What the balance-and-spend chart shows, computed from stored readings. Pure.

The chart has two series over one span ending at `now`: the remaining balance, one
point per stored reading (or per rollup point past the raw data: `Rollup.points()`
gives readings, treated the same), and the spend per UTC hour (spans up to 48h) or
UTC day (longer spans). Spend counts total_usage increases only, the rule of
`forecast._monotone_usage`: a top-up (total_credits rising) is never negative spend,
and a drop in total_usage adds nothing. An increase between two readings is spent
in the bucket of the later one, where it was seen.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from worker.domain import Reading
from worker.formatting import hours_text
from worker.rollup import hour_of
from worker.text import escape_controls

Bucket = Literal["hour", "day"]

# Hourly bars up to two days (at most 48 of them), daily bars beyond.
HOURLY_UP_TO = timedelta(hours=48)
_STEP: dict[Bucket, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True, slots=True)
class ChartData:
    """A chart's content: balance points and spend per bucket, over [start, end] (UTC)."""

    span: timedelta
    start: datetime
    end: datetime
    points: tuple[tuple[datetime, float], ...]
    spend: tuple[tuple[datetime, float], ...]
    bucket: Bucket
    title: str


def build_chart(readings: Iterable[Reading], now: datetime, span: timedelta,
                account: str | None = None) -> ChartData:
    """The chart of the readings taken in [now - span, now]; no readings gives empty series."""
    if span <= timedelta(0):
        msg = f"a chart's span must be positive, not {span!r}"
        raise ValueError(msg)
    start = now - span
    inside = sorted((r for r in readings if start <= r.fetched_at <= now), key=lambda r: r.fetched_at)
    bucket = bucket_for(span)
    return ChartData(
        span=span, start=start, end=now,
        points=tuple((r.fetched_at, r.remaining) for r in inside),
        spend=spend_per_bucket(inside, bucket),
        bucket=bucket,
        title=_title(span, bucket, account),
    )


def bucket_for(span: timedelta) -> Bucket:
    """Hourly bars for spans up to 48h, daily ones beyond."""
    return "hour" if span <= HOURLY_UP_TO else "day"


def bucket_start(at: datetime, bucket: Bucket) -> datetime:
    """The UTC hour or UTC day that `at` falls in."""
    hour = hour_of(at.astimezone(UTC))
    return hour if bucket == "hour" else hour.replace(hour=0)


def spend_per_bucket(readings: Sequence[Reading], bucket: Bucket) -> tuple[tuple[datetime, float], ...]:
    """Usage increases of time-ordered readings, summed per bucket, every bucket from the
    first reading's to the last one's (zeros included); empty without readings."""
    if not readings:
        return ()
    sums = dict.fromkeys(_buckets(readings[0].fetched_at, readings[-1].fetched_at, bucket), 0.0)
    for before, after in itertools.pairwise(readings):
        sums[bucket_start(after.fetched_at, bucket)] += max(0.0, after.total_usage - before.total_usage)
    return tuple(sums.items())


def _buckets(first: datetime, last: datetime, bucket: Bucket) -> list[datetime]:
    at, end = bucket_start(first, bucket), bucket_start(last, bucket)
    out = []
    while at <= end:
        out.append(at)
        at += _STEP[bucket]
    return out


def _title(span: timedelta, bucket: Bucket, account: str | None) -> str:
    where = f" ({escape_controls(account)})" if account else ""
    return f"Remaining balance and spend per {bucket}{where}, last {hours_text(span / timedelta(hours=1))}"


# --------------------------------------------------------------------------- JSON
# The form a parent hands a chart to the rendering child in: exact (floats keep their
# repr, datetimes their offset), and checked on the way back in.


def to_json(data: ChartData) -> str:
    """ChartData as one JSON document."""
    return json.dumps({
        "span_seconds": data.span.total_seconds(),
        "start": data.start.isoformat(), "end": data.end.isoformat(),
        "points": [[t.isoformat(), v] for t, v in data.points],
        "spend": [[t.isoformat(), v] for t, v in data.spend],
        "bucket": data.bucket, "title": data.title,
    }, allow_nan=False)


def from_json(text: str) -> ChartData:
    """ChartData from `to_json`'s output; ValueError when the document is not one."""
    try:
        doc = json.loads(text)
        return ChartData(
            span=timedelta(seconds=_number(doc["span_seconds"])),
            start=_when(doc["start"]), end=_when(doc["end"]),
            points=_series(doc["points"]), spend=_series(doc["spend"]),
            bucket=_bucket(doc["bucket"]), title=str(doc["title"]),
        )
    except (KeyError, TypeError, AttributeError) as err:
        msg = f"not a chart document: {type(err).__name__} {err}"
        raise ValueError(msg) from None


def _series(rows: list[Any]) -> tuple[tuple[datetime, float], ...]:
    return tuple((_when(t), _number(v)) for t, v in rows)


def _when(text: Any) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        msg = f"a chart time needs a UTC offset: {text!r}"
        raise ValueError(msg)
    return at


def _number(value: Any) -> float:
    # json's bool is an int, and it accepts NaN and Infinity: neither is a balance.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        msg = f"not a finite number: {value!r}"
        raise ValueError(msg)
    return float(value)


def _bucket(value: Any) -> Bucket:
    if value == "hour":
        return "hour"
    if value == "day":
        return "day"
    msg = f"unknown bucket {value!r}"
    raise ValueError(msg)
