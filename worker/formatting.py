"""How money, durations and times read in every output, message and log line: one place."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

_UNITS = {"y": 365 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def money(value: float) -> str:
    """USD with cents and thousands separators; an overdrawn balance reads -$15.00."""
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def rate(per_hour: float) -> str:
    """A burn rate: $4.20/h."""
    return f"{money(per_hour)}/h"


def hours_text(hours: float) -> str:
    """A forecast span: 45m, 7.5h, 3d."""
    if hours < 1:
        return f"{max(1, round(hours * 60))}m"
    if hours < 48:
        return f"{hours:.1f}h".replace(".0h", "h")
    return f"{hours / 24:.1f}d".replace(".0d", "d")


def format_duration(value: timedelta) -> str:
    """A timedelta in the settings' own "1h30m" form (seconds precision)."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit in "ydhms":  # weeks are accepted on input but "30d" reads better than "4w2d"
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


def iso(value: datetime) -> str:
    """A UTC timestamp as ISO 8601 to the second: 2026-11-25T10:00:00Z."""
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def local_time(value: datetime, zone: tzinfo) -> str:
    """A moment as people read it in `zone`: 2026-11-25 11:00 CET."""
    local = value.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname() or ''}".rstrip()


def ago(delta: timedelta) -> str:
    """How long ago, roughly: "just now", "12 min ago", "3 h ago", "2 days ago"."""
    seconds = delta.total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"
