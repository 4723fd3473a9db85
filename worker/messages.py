"""Render a lifecycle transition into a title, a body and an apprise notify type."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from worker.domain import AlertState, Figures, Reason, Severity
from worker.formatting import format_duration, hours_text, iso, money, rate

# apprise's NotifyType values, spelled out so the core never imports apprise.
NOTIFY_TYPES = {
    Severity.CRITICAL: "failure",
    Severity.WARNING: "warning",
    Severity.INFO: "info",
}
RESOLVED_TYPE = "success"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str
    notify_type: str
    key: str


def render(
    state: AlertState, reason: Reason, severity: Severity, ctx: Figures, now: datetime, *,
    named: bool = False, notes: Sequence[str] = (),
) -> Rendered:
    """The notification for `reason` on `state` (which is the state after the step); `named`:
    the account is named (several are watched); `notes` are lines to add (what the guard did)."""
    key = idempotency_key(state, reason, named)
    who = subject(state, named)
    if reason is Reason.RESOLVED:
        title = f"[RESOLVED] creditwatch: {who} resolved"
        head = f"{who} is resolved" + (f": {state.summary}." if state.summary else ".")
        return Rendered(title, _body(head, ctx, key, notes), RESOLVED_TYPE, key)
    label = severity.value.upper()
    still = " (still firing)" if reason is Reason.REPEAT else ""
    title = f"[{label}] creditwatch: {who}{still}"
    head = f"{who} is firing: {state.summary}."
    if reason is Reason.REPEAT and state.firing_since is not None:
        head += f" Firing for {format_duration(now - state.firing_since)}."
    return Rendered(title, _body(head, ctx, key, notes), NOTIFY_TYPES[severity], key)


def subject(state: AlertState, named: bool) -> str:
    """What the alert is about: `[account: ]rule[ for key]`."""
    text = f"{state.account}: {state.rule}" if named else state.rule
    return f"{text} for key {state.key_name}" if state.key else text


def _body(head: str, ctx: Figures, key: str, notes: Sequence[str]) -> str:
    lines = [head, balance_line(ctx)]
    forecast = forecast_line(ctx)
    if forecast:
        lines.append(forecast)
    lines += notes
    lines.append(f"ref: {key}")
    return "\n".join(lines)


def balance_line(ctx: Figures) -> str:
    r = ctx.latest
    if r is None:
        return "No balance has been read yet."
    return (
        f"Balance: {money(r.remaining)} remaining of {money(r.total_credits)} "
        f"(used {money(r.total_usage)}) at {iso(r.fetched_at)}."
    )


def forecast_line(ctx: Figures) -> str:
    if ctx.burn_per_hour is None:
        return ""
    text = f"Burning {rate(ctx.burn_per_hour)}"
    if ctx.runway_hours is not None:
        text += f", about {hours_text(ctx.runway_hours)} left"
    return text + "."


def idempotency_key(state: AlertState, reason: Reason, named: bool = False) -> str:
    """Stable per transition, so a receiver can spot the rare duplicate after a crash:
    `[account/]rule[[key~id]]#period/transition`."""
    suffix = f"repeat-{state.repeats}" if reason is Reason.REPEAT else reason.value
    alert = f"{state.account}/{state.rule}" if named else state.rule
    if state.key:
        name = _UNSAFE.sub("-", state.key_name.split(" (", 1)[0])[:40]
        alert += f"[{name}~{state.key[:6]}]"
    return f"{alert}#{state.period}/{suffix}"
