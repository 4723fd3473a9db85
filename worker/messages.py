"""Render a lifecycle transition into a title, a body and an apprise notify type.

Read as the person on call would: the title says at a glance what is wrong, how bad and for
which account (`[CRITICAL] prod: low-balance, $4.12 left`); the body gives one fact a line,
what to do (where to top up, where the keys are), times in `[alerts] timezone` with how long
ago, and a `ref:` line that identifies the message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from worker.domain import AlertState, Figures, Reason, Severity
from worker.formatting import ago, format_duration, hours_text, local_time, money, rate

# apprise's NotifyType values, spelled out so the core never imports apprise.
NOTIFY_TYPES = {
    Severity.CRITICAL: "failure",
    Severity.WARNING: "warning",
    Severity.INFO: "info",
}
RESOLVED_TYPE = "success"
TOP_UP = "https://openrouter.ai/settings/credits"
KEYS_PAGE = "https://openrouter.ai/settings/keys"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Style:
    """How messages read: the time zone, whether the account is named, the forecast window."""

    zone: ZoneInfo = UTC_ZONE
    named: bool = False
    window: timedelta = timedelta(hours=6)


@dataclass(frozen=True, slots=True)
class Rendered:
    title: str
    body: str
    notify_type: str
    key: str


def render(
    state: AlertState, reason: Reason, severity: Severity, ctx: Figures, now: datetime, *,
    figure: str = "", style: Style | None = None, notes: Sequence[str] = (), topic: str = "balance",
) -> Rendered:
    """The notification for `reason` on `state` (the state after the step). `figure` is the
    rule's figure for the title; `topic` ("balance", "key" or "fetch") picks the link to act
    on; `notes` are lines to add (what the guard did)."""
    style = style or Style()
    key = idempotency_key(state, reason, style.named)
    who = subject(state, style.named)
    shown = f", {figure}" if figure else ""
    said = f": {state.summary}." if state.summary else "."
    if reason is Reason.RESOLVED:
        title = f"[RESOLVED] {who} resolved{shown}"
        head = f"{state.rule} is resolved{said}"
        notify_type = RESOLVED_TYPE
    else:
        still = " (still firing)" if reason is Reason.REPEAT else ""
        title = f"[{severity.value.upper()}] {who}{shown}{still}"
        head = f"{state.rule} is firing{said}"
        notify_type = NOTIFY_TYPES[severity]
    lines = [head, *_identity(state, style), *_facts(state, reason, ctx, now, style, topic), *notes]
    lines.append(f"ref: {key}")
    return Rendered(title, "\n".join(lines), notify_type, key)


def subject(state: AlertState, named: bool) -> str:
    """What the alert is about: `[account: ]rule`."""
    return f"{state.account}: {state.rule}" if named else state.rule


def _identity(state: AlertState, style: Style) -> list[str]:
    lines = [f"Account: {state.account}"] if style.named else []
    if state.key:
        lines.append(f"Key: {state.key_name}")
    return lines


def _facts(state: AlertState, reason: Reason, ctx: Figures, now: datetime, style: Style,
           topic: str) -> list[str]:
    lines = [balance_line(ctx, now, style.zone)]
    forecast = forecast_line(ctx, style.window)
    if forecast:
        lines.append(forecast)
    if reason is Reason.REPEAT and state.firing_since is not None:
        lines.append(f"Firing for {format_duration(now - state.firing_since)}, since "
                     f"{local_time(state.firing_since, style.zone)}.")
    if reason is not Reason.RESOLVED:
        lines.append({"balance": f"Top up: {TOP_UP}", "key": f"Keys: {KEYS_PAGE}",
                      "fetch": f"Check the key and the API: {KEYS_PAGE}"}[topic])
    return lines


def balance_line(ctx: Figures, now: datetime | None = None, zone: ZoneInfo = UTC_ZONE) -> str:
    r = ctx.latest
    if r is None:
        return "Balance: not read yet."
    when = local_time(r.fetched_at, zone)
    if now is not None:
        when += f" ({ago(now - r.fetched_at)})"
    return (f"Balance: {money(r.remaining)} remaining of {money(r.total_credits)} "
            f"(used {money(r.total_usage)}), read {when}.")


def forecast_line(ctx: Figures, window: timedelta = timedelta(hours=6)) -> str:
    if ctx.burn_per_hour is None:
        return ""
    text = f"Burning {rate(ctx.burn_per_hour)}"
    if ctx.runway_hours is not None:
        text += f", about {hours_text(ctx.runway_hours)} left"
    text += f" (over the last {format_duration(window)}"
    if ctx.covered is not None and ctx.covered < window / 4:
        text += (f"; from only {format_duration(ctx.covered) if ctx.covered else '0s'} of readings, "
                 "a rough figure")
    return text + ")."


def idempotency_key(state: AlertState, reason: Reason, named: bool = False) -> str:
    """Stable per transition, so a receiver can spot the rare duplicate after a crash:
    `[account/]rule[[key~id]]#period/transition`."""
    suffix = f"repeat-{state.repeats}" if reason is Reason.REPEAT else reason.value
    alert = f"{state.account}/{state.rule}" if named else state.rule
    if state.key:
        name = _UNSAFE.sub("-", state.key_name.split(" (", 1)[0])[:40]
        alert += f"[{name}~{state.key[:6]}]"
    return f"{alert}#{state.period}/{suffix}"
