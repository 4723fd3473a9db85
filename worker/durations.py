"""Durations as operators write them: "30s", "5m", "1h30m", "2d", "2w", "1y" (365 days)."""

from __future__ import annotations

import re
from datetime import timedelta

# [0-9], not \d: \d also matches other scripts' digits ("\u0663s"), which int() accepts.
_PART = re.compile(r"([0-9]+)(y|w|d|h|m|s)")
_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_ORDER = "ywdhms"
# Anything longer is a typo, and timedelta overflows past ~2.7 million years.
MAX_SECONDS = 100 * 365 * 86400


class DurationError(ValueError):
    """A string that is not a duration; `reason` says why without quoting the text."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        # Settings errors use `reason`: the text may have come from a ${VAR} secret.
        self.reason = reason or message


def parse_duration(text: str) -> timedelta:
    """Parse "1h30m"-style text into a positive timedelta, or raise DurationError."""
    if not isinstance(text, str) or not text.strip():
        msg = 'expected a duration such as "30s", "5m", "1h30m" or "1d"'
        raise DurationError(msg)
    compact = text.strip()
    parts = _PART.findall(compact)
    if "".join(n + u for n, u in parts) != compact or not _in_order([u for _, u in parts]):
        why = 'must be a duration such as "30s", "5m", "1h30m" or "1d"'
        raise DurationError(f"{text!r} {why}", why)
    # Cap the digits before int(): past 4300 of them int() raises a plain ValueError.
    too_long = any(len(n.lstrip("0")) > 15 for n, _ in parts)
    seconds = MAX_SECONDS + 1 if too_long else sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        why = "must be longer than zero"
        raise DurationError(f"{text!r} {why}", why)
    if seconds > MAX_SECONDS:
        why = "must be at most 100 years"
        raise DurationError(f"{text!r} {why}", why)
    return timedelta(seconds=seconds)


def _in_order(units: list[str]) -> bool:
    indices = [_ORDER.index(u) for u in units]
    return indices == sorted(set(indices))
