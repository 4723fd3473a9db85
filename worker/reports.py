"""What `status` and `history` print: text tables, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from worker.domain import Reading
from worker.formatting import format_duration, hours_text, iso, money
from worker.sendpolicy import Backlog


@dataclass(frozen=True)
class LastFetch:
    at: datetime
    ok: bool
    error: str | None


@dataclass(frozen=True)
class FiringAlert:
    rule: str
    severity: str
    since: datetime | None
    message: str


@dataclass(frozen=True)
class StatusView:
    latest: Reading | None
    burn_per_hour: float | None
    runway_hours: float | None
    window: timedelta
    last_fetch: LastFetch | None
    alerts: Sequence[FiringAlert]
    backlog: Sequence[Backlog]

    @property
    def undelivered(self) -> int:
        return sum(b.waiting for b in self.backlog)


def status_json(view: StatusView) -> str:
    r = view.latest
    doc: dict[str, Any] = {
        "fetched_at": iso(r.fetched_at) if r else None,
        "total_credits": r.total_credits if r else None,
        "total_usage": r.total_usage if r else None,
        "remaining": _usd(r.remaining) if r else None,
        "burn_rate_per_hour": view.burn_per_hour,
        "runway_hours": view.runway_hours,
        "forecast_window": format_duration(view.window),
        "last_fetch": _last_fetch(view.last_fetch),
        "alerts": [
            {"rule": a.rule, "severity": a.severity, "since": iso(a.since) if a.since else None,
             "message": a.message}
            for a in view.alerts
        ],
        "undelivered_notifications": view.undelivered,
        "outbox": [_backlog_json(b) for b in view.backlog],
    }
    return dumps(doc)


def _backlog_json(b: Backlog) -> dict[str, Any]:
    h = b.head
    return {"channel": b.channel, "waiting": b.waiting, "oldest": h.key, "status": h.status.value,
            "tries": h.attempts, "next_try_at": iso(h.next_try_at) if h.next_try_at else None,
            "last_error": h.last_error}


def dumps(doc: Any) -> str:
    """JSON that is always valid: a non-finite number (which no JSON parser accepts) is null."""
    return json.dumps(_finite(doc), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _usd(value: float) -> float:
    """A difference of two API amounts without float noise (79.5, not 79.49999999999999)."""
    return round(value, 6)


def _last_fetch(last: LastFetch | None) -> dict[str, Any] | None:
    if last is None:
        return None
    return {"at": iso(last.at), "ok": last.ok, "error": last.error}


def status_text(view: StatusView) -> str:
    r = view.latest
    window = format_duration(view.window)
    lines = [
        _row("balance", f"{money(r.remaining)} remaining of {money(r.total_credits)} "
                        f"(used {money(r.total_usage)}) at {iso(r.fetched_at)}" if r else "no reading yet"),
        _row("burn rate", f"${view.burn_per_hour:,.2f}/h over {window}" if view.burn_per_hour is not None
             else f"unknown (needs two readings in {window})"),
        _row("runway", hours_text(view.runway_hours) if view.runway_hours is not None else "unknown"),
        _row("last fetch", _fetch_text(view.last_fetch)),
    ]
    if view.alerts:
        lines.append(_row("alerts", f"{len(view.alerts)} firing"))
        lines += [f"  {a.severity.upper():<8} {a.rule} since {iso(a.since) if a.since else '?'}: {a.message}"
                  for a in view.alerts]
    else:
        lines.append(_row("alerts", "none firing"))
    if view.backlog:
        lines.append(_row("outbox", f"{view.undelivered} notification(s) waiting for delivery"))
        lines += [_backlog_text(b) for b in view.backlog]
    return "\n".join(lines)


def _backlog_text(b: Backlog) -> str:
    h = b.head
    text = f"  {b.channel}: {b.waiting} waiting, oldest {h.key}"
    if h.attempts:
        text += f", tried {h.attempts} time{'s' if h.attempts != 1 else ''}"
    if h.next_try_at is not None:
        text += f", next try at {iso(h.next_try_at)}"
    if h.last_error:
        text += f"; last error: {h.last_error}"
    return text


def _row(label: str, value: str) -> str:
    return f"{label:<11} {value}"


def _fetch_text(last: LastFetch | None) -> str:
    if last is None:
        return "never"
    return f"ok at {iso(last.at)}" if last.ok else f"FAILED at {iso(last.at)}: {last.error}"


def history_json(readings: Sequence[Reading]) -> str:
    return dumps([_history_row(r) for r in readings])


def _history_row(r: Reading) -> dict[str, Any]:
    return {"fetched_at": iso(r.fetched_at), "total_credits": r.total_credits,
            "total_usage": r.total_usage, "remaining": _usd(r.remaining)}


def history_csv(readings: Sequence[Reading]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["fetched_at", "total_credits", "total_usage", "remaining"])
    for r in readings:
        row = (r.total_credits, r.total_usage, _usd(r.remaining))
        writer.writerow([iso(r.fetched_at), *map(repr, row)])
    return out.getvalue().rstrip("\n")


def history_table(readings: Sequence[Reading]) -> str:
    if not readings:
        return "no readings in this period"
    header = f"{'fetched_at':<20}  {'credits':>12}  {'usage':>12}  {'remaining':>12}"
    rows = [f"{iso(r.fetched_at):<20}  {money(r.total_credits):>12}  {money(r.total_usage):>12}  "
            f"{money(r.remaining):>12}" for r in readings]
    return "\n".join([header, *rows])
