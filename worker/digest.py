"""The digest: one message per period (`[digest] every`, from `at` in `[alerts] timezone`) with
each account's spend, average and peak burn, lowest balance, runway, the alerts of the period,
and the keys that spent the most. Pure: the shell loads the data, queues the message once per
period (the digests table), and the outbox delivers it like any message."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from worker.domain import Figures, KeyRecord, Reading
from worker.formatting import format_duration, hours_text, local_time, money, rate

DAY = timedelta(days=1)
REFERENCE = date(2024, 1, 1)  # a Monday: "every 7d" digests go out on Mondays
TOP_KEYS = 5


def latest_period(now: datetime, every: timedelta, at: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The newest complete period [start, end) at `now`. Periods of whole days start at `at`
    local time (so they follow daylight saving); shorter or odd ones step from the reference."""
    hours, minutes = (int(part) for part in at.split(":"))
    if every % DAY == timedelta(0):
        days = every // DAY
        local = now.astimezone(zone)
        day = local.date()
        while True:
            end = datetime.combine(day, time(hours, minutes), zone)
            if (day - REFERENCE).days % days == 0 and end <= now:
                start = datetime.combine(day - timedelta(days=days), time(hours, minutes), zone)
                return _utc(start), _utc(end)
            day -= timedelta(days=1)
    origin = datetime.combine(REFERENCE, time(hours, minutes), zone)
    end = origin + ((now - origin) // every) * every
    return _utc(end - every), _utc(end)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(ZoneInfo("UTC"))


@dataclass(frozen=True, slots=True)
class AccountPeriod:
    """One account's figures over a period."""

    account: str
    readings: Sequence[Reading]  # in the period, oldest first (rollup points included)
    figures: Figures  # now: the balance, burn and runway as status shows them
    fired: Sequence[str]  # the alerts that started firing in the period (their refs)
    keys: Sequence[KeyRecord] = ()


@dataclass(frozen=True, slots=True)
class Summary:
    spend: float
    average_burn: float | None
    peak_burn: float | None  # the most spent in one hour of the period, per hour
    lowest: float | None


def summarise(period: AccountPeriod, start: datetime, end: datetime) -> Summary:
    rs = [r for r in period.readings if start <= r.fetched_at < end]
    spent = [max(0.0, b.total_usage - a.total_usage) for a, b in itertools.pairwise(rs)]
    spend = sum(spent)
    hours = (end - start).total_seconds() / 3600
    by_hour: dict[datetime, float] = {}
    for later, amount in zip(rs[1:], spent, strict=True):
        bucket = later.fetched_at.replace(minute=0, second=0, microsecond=0)
        by_hour[bucket] = by_hour.get(bucket, 0.0) + amount
    lowest = min((r.remaining for r in rs), default=None)
    return Summary(spend, spend / hours if rs else None, max(by_hour.values(), default=None), lowest)


def render(periods: Sequence[AccountPeriod], start: datetime, end: datetime, zone: ZoneInfo, named: bool,
           period_name: str) -> tuple[str, str]:
    """(title, body) of the digest: one block of facts per account."""
    title = f"[DIGEST] creditwatch {period_name} digest to {local_time(end, zone)}"
    lines = [f"Digest for {local_time(start, zone)} to {local_time(end, zone)} "
             f"({format_duration(end - start)})."]
    for p in periods:
        s = summarise(p, start, end)
        if named:
            lines += ["", f"Account: {p.account}"]
        lines += _block(p, s)
    return title, "\n".join(lines)


def _block(p: AccountPeriod, s: Summary) -> list[str]:
    f = p.figures
    lines = [f"Spent: {money(s.spend)}" + (f" ({rate(s.average_burn)} on average)" if s.average_burn else "")]
    if s.peak_burn is not None:
        lines.append(f"Peak burn: {rate(s.peak_burn)} (the most spent in one hour)")
    if s.lowest is not None:
        lines.append(f"Lowest balance: {money(s.lowest)}")
    if f.latest is not None:
        lines.append(f"Balance now: {money(f.latest.remaining)}")
    lines.append(f"Runway now: about {hours_text(f.runway_hours)}" if f.runway_hours is not None
                 else "Runway now: unknown (no spend to forecast from)")
    lines.append(f"Alerts of the period: {', '.join(p.fired)}" if p.fired else "Alerts of the period: none")
    top = sorted(p.keys, key=lambda k: k.usage_daily, reverse=True)[:TOP_KEYS]
    if top:
        lines.append("Top keys today (UTC): " + ", ".join(f"{k.name} {money(k.usage_daily)}" for k in top))
    return lines
