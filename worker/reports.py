"""Every rendering of the snapshot and of a tick: `status` (text, JSON), the `check` line, the
tick's log line; and `history` (table, JSON, CSV). Pure: values in, text out."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from worker.domain import FetchRecord, KeyRecord, Reading, Reason, Silence
from worker.formatting import format_duration, hours_text, iso, money, rate
from worker.lease import Leadership
from worker.sendpolicy import Backlog
from worker.settings_base import DEFAULT_ACCOUNT
from worker.snapshot import AlertView, Snapshot, TickReport, Transition

TOP_KEYS = 5  # keys listed by `status` (text): the biggest spenders today

# -- status --json ------------------------------------------------------------------------------


def status_json(snaps: Sequence[Snapshot], leader: Leadership | None = None) -> str:
    """The first account's figures at the top level (all of them when one account is watched),
    and every account under `accounts`; the outbox and the leader are shared."""
    first = snaps[0]
    doc: dict[str, Any] = {
        **_account_json(first),
        "alerts": [_alert_json(a) for s in snaps for a in s.firing],
        "pending": [_pending_json(a) for s in snaps for a in s.pending],
        "undelivered_notifications": first.undelivered,
        "outbox": [_backlog_json(b) for b in first.backlog],
        "silences": json.loads(silences_json(_all_silences(snaps))),
        "accounts": [{**_account_json(s), "alerts": [_alert_json(a) for a in s.firing],
                      "pending": [_pending_json(a) for a in s.pending],
                      "keys": [_key_json(k) for k in s.keys]} for s in snaps],
        "leader": _leader_json(leader),
    }
    return dumps(doc)


def _leader_json(leader: Leadership | None) -> dict[str, Any] | None:
    if leader is None:
        return None
    return {"pid": leader.pid, "host": leader.host, "epoch": leader.epoch, "since": _iso(leader.since),
            "expires_at": _iso(leader.expires_at), "expired": leader.expired}


def _all_silences(snaps: Sequence[Snapshot]) -> list[Silence]:
    seen: dict[int, Silence] = {}
    for snap in snaps:
        seen.update({x.id: x for x in snap.silences})
    return [seen[i] for i in sorted(seen)]


def _account_json(snap: Snapshot) -> dict[str, Any]:
    r, f = snap.latest, snap.figures
    return {
        "account": snap.account,
        "fetched_at": iso(r.fetched_at) if r else None,
        "total_credits": r.total_credits if r else None,
        "total_usage": r.total_usage if r else None,
        "remaining": _usd(r.remaining) if r else None,
        "burn_rate_per_hour": f.burn_per_hour,
        "runway_hours": f.runway_hours,
        "forecast_window": format_duration(snap.window),
        "last_fetch": _last_fetch(snap.last_fetch),
    }


def _key_json(k: KeyRecord) -> dict[str, Any]:
    return {"id": k.id, "name": k.name, "label": k.label, "limit": k.limit,
            "limit_remaining": k.limit_remaining, "limit_reset": k.limit_reset, "usage": k.usage,
            "usage_daily": k.usage_daily, "usage_weekly": k.usage_weekly, "usage_monthly": k.usage_monthly,
            "seen_at": iso(k.seen_at)}


def _alert_json(a: AlertView) -> dict[str, Any]:
    doc = {"rule": a.rule, "severity": a.severity.value, "since": _iso(a.since), "message": a.summary,
           "account": a.account}
    return doc | ({"key": a.key} if a.key else {})


def _pending_json(a: AlertView) -> dict[str, Any]:
    return _alert_json(a) | {"fires_at": _iso(a.fires_at)}


def _backlog_json(b: Backlog) -> dict[str, Any]:
    h = b.head
    return {"channel": b.channel, "waiting": b.waiting, "oldest": h.key, "status": h.status.value,
            "tries": h.attempts, "next_try_at": _iso(h.next_try_at), "last_error": h.last_error}


def _last_fetch(last: FetchRecord | None) -> dict[str, Any] | None:
    if last is None:
        return None
    return {"at": iso(last.at), "ok": last.ok, "error": last.message}


def _iso(value: Any) -> str | None:
    return iso(value) if value is not None else None


def _usd(value: float) -> float:
    """A difference of two API amounts without float noise (79.5, not 79.49999999999999)."""
    return round(value, 6)


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


# -- status (text) ------------------------------------------------------------------------------


def status_text(snaps: Sequence[Snapshot], leader: Leadership | None = None) -> str:
    """One block per account (headed by its name when several are watched), then the outbox,
    then the leader of `run` (once a lease was taken)."""
    named = len(snaps) > 1 or snaps[0].account != DEFAULT_ACCOUNT
    lines: list[str] = []
    for snap in snaps:
        if named:
            lines += ([""] if lines else []) + [_row("account", snap.account)]
        lines += _account_text(snap)
    silenced = _all_silences(snaps)
    if silenced:
        lines.append(_row("silences", f"{len(silenced)} in force or ahead"))
        lines += [f"  {silence_line(x, snaps[0].now)}" for x in silenced]
    backlog = snaps[0].backlog
    if backlog:
        lines.append(_row("outbox", f"{snaps[0].undelivered} notification(s) waiting for delivery"))
        lines += [_backlog_text(b) for b in backlog]
    if leader is not None:
        lines.append(_row("leader", _leader_text(leader)))
    return "\n".join(lines)


def _leader_text(leader: Leadership) -> str:
    held = (f"lease expired at {_iso(leader.expires_at) or '?'}, no replica leads until one takes it"
            if leader.expired else f"lease until {_iso(leader.expires_at) or '?'}")
    return (f"{leader.host} pid {leader.pid}, epoch {leader.epoch}, since {_iso(leader.since) or '?'} "
            f"({held})")


def _account_text(snap: Snapshot) -> list[str]:
    r = snap.latest
    f = snap.figures
    window = format_duration(snap.window)
    lines = [
        _row("balance", f"{money(r.remaining)} remaining of {money(r.total_credits)} "
                        f"(used {money(r.total_usage)}) at {iso(r.fetched_at)}" if r else "no reading yet"),
        _row("burn rate", f"{rate(f.burn_per_hour)} over {window}" if f.burn_per_hour is not None
             else f"unknown (needs two readings in {window})"),
        _row("runway", hours_text(f.runway_hours) if f.runway_hours is not None else "unknown"),
        _row("last fetch", _fetch_text(snap.last_fetch)),
    ]
    lines.append(_row("alerts", f"{len(snap.firing)} firing" if snap.firing else "none firing"))
    lines += [f"  {a.severity.value.upper():<8} {a.subject} since {_iso(a.since) or '?'}: {a.summary}"
              for a in snap.firing]
    if snap.pending:
        lines.append(_row("pending", f"{len(snap.pending)} pending"))
        lines += [f"  {a.severity.value.upper():<8} {a.subject} since {_iso(a.since) or '?'}, fires at "
                  f"{_iso(a.fires_at) or '?'} if it still holds: {a.summary}" for a in snap.pending]
    if snap.keys:
        top = sorted(snap.keys, key=lambda k: k.usage_daily, reverse=True)[:TOP_KEYS]
        lines.append(_row("keys", f"{len(snap.keys)} watched; most spent today (UTC):"))
        lines += [f"  {k.shown}: {money(k.usage_daily)} today, {money(k.usage_monthly)} this month"
                  + (f", {money(k.limit_remaining or 0.0)} of {money(k.limit)} left" if k.limit is not None
                     else "") for k in top]
    return lines


def _row(label: str, value: str) -> str:
    return f"{label:<11} {value}"


def _fetch_text(last: FetchRecord | None) -> str:
    if last is None:
        return "never"
    return f"ok at {iso(last.at)}" if last.ok else f"FAILED at {iso(last.at)}: {last.message}"


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


# -- check and the tick's log line --------------------------------------------------------------


def check_line(report: TickReport) -> str:
    """The Nagios plugin line: `CREDITWATCH <STATE> - <text> | <perfdata>`; with several
    accounts, each account's figures are prefixed with its name."""
    named = len(report.accounts) > 1
    parts: list[str] = []
    perf: list[str] = []
    for tick in report.accounts:
        snap, outcome = tick.snapshot, tick.outcome
        prefix = f"{snap.account}: " if named else ""
        figures = []
        if snap.latest is not None:
            figures.append(f"{money(snap.latest.remaining)} remaining")
            perf.append(f"{snap.account + '_' if named else ''}remaining={snap.latest.remaining:.2f}")
        if snap.figures.burn_per_hour is not None:
            figures.append(f"burning {rate(snap.figures.burn_per_hour)}")
        if snap.figures.runway_hours is not None:
            figures.append(f"about {hours_text(snap.figures.runway_hours)} left")
        if not outcome.ok:
            figures.append(f"fetch failed: {outcome.message}")
        if figures:
            parts.append(prefix + ("; " if not named else ", ").join(figures))
    firing = [a for s in report.snapshots for a in s.firing]
    pending = [a for s in report.snapshots for a in s.pending]
    parts.append("firing: " + ", ".join(_named(a, named) for a in firing) if firing else "nothing firing")
    if pending:
        parts.append("pending: " + ", ".join(_named(a, named) for a in pending))
    shown = f" | {' '.join(perf)}" if perf else ""
    return f"CREDITWATCH {report.exit_code.name} - {'; '.join(parts)}{shown}"


def _named(a: AlertView, named: bool) -> str:
    who = f"{a.account}/{a.subject}" if named else a.subject
    return f"{who} ({a.severity.value})"


def summary_line(report: TickReport) -> str:
    """The one log line per tick."""
    named = len(report.accounts) > 1
    fetches = []
    balances = []
    for tick in report.accounts:
        outcome, latest = tick.outcome, tick.snapshot.latest
        tries = f", {outcome.attempts} attempts" if outcome.attempts > 1 else ""
        fetch = "ok" if outcome.ok else f"{outcome.kind.value} ({outcome.message}{tries})"
        keys = getattr(tick.keys, "ok", True)
        if outcome.ok and not keys:
            fetch = f"keys-{tick.keys.kind.value} ({tick.keys.message})"  # type: ignore[union-attr]
        balance = money(latest.remaining) if latest else "unknown"
        fetches.append(f"{tick.account}:{fetch}" if named else fetch)
        balances.append(f"{tick.account}:{balance}" if named else balance)

    def names(reason: Reason) -> str:
        return ",".join(_transition(t, named) for t in report.transitions if t.reason is reason) or "-"

    return (
        f"tick fetch={' '.join(fetches)} balance={' '.join(balances)} duration={report.seconds:.2f}s "
        f"fired={names(Reason.FIRST)} repeated={names(Reason.REPEAT)} resolved={names(Reason.RESOLVED)} "
        f"delivered={report.delivered} failed={report.failed}"
    )


def _transition(t: Transition, named: bool) -> str:
    who = f"{t.account}/{t.rule}" if named else t.rule
    return f"{who}[{t.key}]" if t.key else who


# -- history ------------------------------------------------------------------------------------


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


# -- silences -------------------------------------------------------------------------------------


def silences_json(found: Sequence[Silence]) -> str:
    return dumps([{"id": x.id, "rule": x.rule, "account": x.account, "starts_at": iso(x.starts_at),
                   "ends_at": iso(x.ends_at), "comment": x.comment} for x in found])


def silences_text(found: Sequence[Silence], now: datetime) -> str:
    if not found:
        return "no silences"
    return "\n".join(silence_line(x, now) for x in found)


def silence_line(x: Silence, now: datetime) -> str:
    scope = f" (account {x.account})" if x.account else ""
    when = f"until {iso(x.ends_at)}" if x.starts_at <= now else f"from {iso(x.starts_at)} to {iso(x.ends_at)}"
    comment = f": {x.comment}" if x.comment else ""
    return f"#{x.id} {x.rule}{scope} {when}{comment}"
