"""Plain values that flow through the core: readings, fetch outcomes, alerts, messages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import IntEnum, StrEnum
from functools import lru_cache

# A reading stored this much earlier than the one stored before it means the wall
# clock was stepped back, not that two replicas' clocks differ a little.
CLOCK_STEP = timedelta(seconds=60)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class FetchKind(StrEnum):
    OK = "ok"
    AUTH = "auth"
    TRANSIENT = "transient"
    BAD_RESPONSE = "bad_response"


@dataclass(frozen=True, slots=True)
class Reading:
    """One stored balance: what `GET /credits` said at `fetched_at` (UTC)."""

    fetched_at: datetime
    total_credits: float
    total_usage: float

    @property
    def remaining(self) -> float:
        return self.total_credits - self.total_usage


@dataclass(frozen=True, slots=True)
class Figures:
    """The balance and its forecast: what every message and output carries where known."""

    latest: Reading | None
    burn_per_hour: float | None
    runway_hours: float | None
    covered: timedelta | None = None  # how much of the window the burn rate's readings span


@lru_cache(maxsize=65_536)  # the same keys come back every tick: hash them once
def key_id(key_hash: str) -> str:
    """A stable id for an API key that reveals nothing of it: 16 hex digits of SHA-256."""
    return hashlib.sha256(key_hash.encode()).hexdigest()[:16]


def key_shown(name: str, label: str) -> str:
    """How every message and output names a key: its name and the API's masked label."""
    return f"{name} ({label})" if label and label != name else name


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key of an account, as `GET /keys` describes it. `id` is a digest of its hash
    (stable, and safe to store and show); the hash itself is kept only in memory, for the
    guard's PATCH, and never printed."""

    id: str
    hash: str = field(repr=False)  # identifies the key to the API; never shown or logged
    name: str
    label: str
    disabled: bool
    limit: float | None
    limit_remaining: float | None
    limit_reset: str | None
    usage: float
    usage_daily: float
    usage_weekly: float
    usage_monthly: float

    @property
    def shown(self) -> str:
        return key_shown(self.name, self.label)

    @property
    def remaining(self) -> float | None:
        """What is left of its limit; None without a limit."""
        if self.limit is None:
            return None
        if self.limit_remaining is not None:
            return self.limit_remaining
        return max(0.0, self.limit - self.usage)


@dataclass(frozen=True, slots=True)
class FetchOutcome:
    """The result of one fetch, success or a classified failure; never raises."""

    kind: FetchKind
    total_credits: float | None = None
    total_usage: float | None = None
    message: str = ""
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.kind is FetchKind.OK


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """A stored fetch attempt: when, how it went, and why not (a message safe to show)."""

    at: datetime
    kind: FetchKind
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind is FetchKind.OK


@dataclass(frozen=True, slots=True)
class FetchStreak:
    """The run of failed fetches up to now: its length and whether any was an auth failure."""

    failures: int = 0
    auth: bool = False
    last_error: str | None = None


class Condition(StrEnum):
    """What a rule says this tick: TRUE, FALSE, or UNKNOWN (keep the alert as it was)."""

    TRUE = "true"
    FALSE = "false"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """A rule's verdict on the history, with the sentence that explains it."""

    condition: Condition
    summary: str = ""
    figure: str = ""  # the figure a title shows: "$4.12 left", "burning $12.00/h"


class Status(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


@dataclass(frozen=True, slots=True)
class AlertState:
    """Where one alert stands: a rule's, for one account, and for one API key when the rule
    is per key (`key` is the key's id, `key_name` how outputs name it); `period` counts the
    times it has started firing."""

    rule: str
    status: Status = Status.INACTIVE
    pending_since: datetime | None = None
    firing_since: datetime | None = None
    last_sent_at: datetime | None = None
    period: int = 0
    repeats: int = 0
    summary: str = ""
    account: str = "default"
    key: str = ""
    key_name: str = ""
    muted: str = ""  # a message held back (silence, inhibition): "first" or "repeat", else ""

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.account, self.rule, self.key)

    @property
    def firing(self) -> bool:
        return self.status is Status.FIRING


class Reason(StrEnum):
    """Why the lifecycle does or does not send a notification this tick."""

    FIRST = "first"
    REPEAT = "repeat"
    RESOLVED = "resolved"
    NONE = "none"
    DIGEST = "digest"  # not the lifecycle's: the periodic digest message


class ExitCode(IntEnum):
    """Nagios plugin codes returned by `check`."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


@dataclass(frozen=True, slots=True)
class Message:
    """A rendered notification for one channel, ready for the outbox."""

    rule: str
    channel: str
    reason: Reason
    severity: Severity
    title: str
    body: str
    notify_type: str
    key: str
    account: str = "default"
    attachment: bytes | None = field(default=None, repr=False)  # a PNG, where the channel takes one


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored: its figures at `seen_at`, the last time they were written."""

    id: str
    name: str
    label: str
    limit: float | None
    limit_remaining: float | None
    limit_reset: str | None
    usage: float
    usage_daily: float
    usage_weekly: float
    usage_monthly: float
    seen_at: datetime

    @property
    def shown(self) -> str:
        return key_shown(self.name, self.label)


@dataclass(frozen=True, slots=True)
class Silence:
    """`creditwatch silence add`: a rule's messages held back from `starts_at` to `ends_at`,
    for one account or (None) every account."""

    id: int
    rule: str
    account: str | None
    starts_at: datetime
    ends_at: datetime
    comment: str = ""

    def covers(self, rule: str, account: str, now: datetime) -> bool:
        return (self.rule == rule and self.account in (None, account)
                and self.starts_at <= now < self.ends_at)
