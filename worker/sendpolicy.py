"""When the outbox sends, waits, or gives up: pure decisions over a channel's oldest message.

A channel receives its messages in the order they were enqueued: only the oldest
undelivered message of a channel is ever considered, and while it waits (backoff,
or a claim held by a live sender) every later message of that channel waits too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

MAX_BACKOFF = timedelta(minutes=15)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    FAILED = "failed"
    DELIVERED = "delivered"
    DROPPED = "dropped"


UNDELIVERED = (OutboxStatus.PENDING, OutboxStatus.FAILED, OutboxStatus.SENDING)


@dataclass(frozen=True, slots=True)
class Head:
    """A channel's oldest undelivered message, as the store sees it."""

    id: int
    channel: str
    key: str
    status: OutboxStatus
    attempts: int
    created_at: datetime
    claimed_until: datetime | None = None
    claimed_by: str | None = None
    next_try_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A claimed message, ready to hand to the channel; `attempt` counts this try."""

    id: int
    channel: str
    key: str
    title: str
    body: str
    notify_type: str
    attempt: int
    attachment: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Backlog:
    """A channel's undelivered messages: how many, and its oldest."""

    channel: str
    waiting: int
    head: Head


class Decision(StrEnum):
    """What to do with a channel's head message now, and why."""

    SEND = "send"  # claim it and send it
    BACKOFF = "backoff"  # it failed recently; the channel waits until next_try_at
    IN_FLIGHT = "in_flight"  # a live sender holds it; the channel waits
    GIVE_UP = "give_up"  # undelivered past give_up_after: drop it, then look at the next one


@dataclass(frozen=True, slots=True)
class Policy:
    interval: timedelta
    give_up_after: timedelta


def backoff(attempts: int, interval: timedelta) -> timedelta:
    """The wait after the `attempts`-th failed try: interval x 2^(k-1), at most 15 minutes."""
    exponent = max(0, attempts - 1)
    if exponent >= 40:  # 2^40 intervals is past any cap; avoid a huge multiplication
        return MAX_BACKOFF
    return min(interval * (1 << exponent), MAX_BACKOFF)


def next_try(tick_at: datetime, attempts: int, interval: timedelta) -> datetime:
    """When a message that failed during the tick that started at `tick_at` may be tried again.

    Measured from the tick's start, less a little slack, so that the tick `backoff` later
    qualifies even when it fires a few milliseconds early relative to this one.
    """
    slack = min(interval / 2, timedelta(seconds=1))
    return tick_at + backoff(attempts, interval) - slack


def decide(head: Head, now: datetime, policy: Policy, claimer_gone: bool) -> Decision:
    """The decision for a channel's head; `claimer_gone` says its claimer is known dead."""
    if head.status is OutboxStatus.SENDING and not claimer_gone and not _lapsed(head, now):
        return Decision.IN_FLIGHT
    if now - head.created_at >= policy.give_up_after:
        return Decision.GIVE_UP
    if head.status is OutboxStatus.FAILED and _backing_off(head.next_try_at, now):
        return Decision.BACKOFF
    return Decision.SEND


def _backing_off(next_try_at: datetime | None, now: datetime) -> bool:
    # A next try dated further ahead than the longest backoff was set before the
    # clock stepped back: do not wait for the clock to catch up.
    return next_try_at is not None and timedelta(0) < next_try_at - now <= MAX_BACKOFF


def _lapsed(head: Head, now: datetime) -> bool:
    """A claim whose lease ran out, or dated so far ahead that the clock must have stepped back."""
    until = head.claimed_until
    if until is None:
        return True
    return until < now or until - now > CLAIM_HORIZON


# No fresh claim reaches further ahead than this (the lease is send_timeout plus a margin,
# send_timeout at most 2 minutes): one dated beyond it predates a backward clock step.
CLAIM_HORIZON = timedelta(minutes=5)


def lease(send_timeout: timedelta) -> timedelta:
    """How long a claim is left to its sender: the send, the parent's margin, and slack."""
    return send_timeout + timedelta(seconds=15)


@dataclass
class Counts:
    """What one delivery phase did, per channel."""

    delivered: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, channel: str) -> None:
        counter = getattr(self, kind)
        counter[channel] = counter.get(channel, 0) + 1

    @staticmethod
    def total(counter: dict[str, int]) -> int:
        return sum(counter.values())

    def left_waiting(self, before: dict[str, int]) -> dict[str, int]:
        """Undelivered messages per channel after this phase, from the count before it."""
        after = {ch: n - self.delivered.get(ch, 0) - self.dropped.get(ch, 0) for ch, n in before.items()}
        return {ch: n for ch, n in after.items() if n > 0}
