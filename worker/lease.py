"""The leader lease's decisions: pure functions of the lease row, the database's clock and
who we are. The shell (worker.leader) reads the row and the database's clock in one
statement, asks `plan` what to do, and writes the plan back with a conditional UPDATE.

Several `run` replicas share one database; the replica holding the lease leads (fetches,
evaluates, enqueues, delivers, prunes), the others stand by and try to take it each tick.
The epoch only grows: every take bumps it, and every write transaction of a leader is
checked against it before it commits (worker.store.lease.fenced), so a leader that froze
and woke up with a stale epoch writes nothing.

Timing, for a schedule interval I (see `terms_for`): the lease lasts L = max(2 x I, 10 s)
of the database's clock and is renewed every L / 4 by a thread of its own (and at the
start of each tick), so a slow tick never loses it. A standby tries at each of its ticks,
so a leader that dies, freezes or loses the database is replaced at most L + I after its
last renewal: within the contract's max(3 x I, 15 s) + I, with max(I, 5 s) to spare for
the new leader's first tick. A holder on this host whose process is gone is replaced at
the standby's next tick, without waiting for the lease.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

MIN_LEASE = timedelta(seconds=10)
RENEWALS_PER_LEASE = 4


class LostLease(Exception):
    """This replica's epoch is no longer the database's: the write was rolled back."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The lease row as stored; `holder` is a procs token "host:pid:start", None before
    anyone took it."""

    holder: str | None = None
    epoch: int = 0
    since: datetime | None = None  # when the holder took it (its epoch began)
    expires_at: datetime | None = None  # the database's clock


@dataclass(frozen=True, slots=True)
class Terms:
    """How long a lease lasts and how often its holder renews it."""

    duration: timedelta
    renew_every: timedelta

    @property
    def acting_for(self) -> timedelta:
        """How long after the start of its last successful renewal a holder still counts itself
        the leader: a renewal short of the lease, so it stops before the database lets a
        standby take over."""
        return self.duration - self.renew_every


def terms_for(interval: timedelta) -> Terms:
    """The lease for a schedule interval: see the module's docstring for the bound it keeps."""
    duration = max(2 * interval, MIN_LEASE)
    return Terms(duration, duration / RENEWALS_PER_LEASE)


def failover_bound(interval: timedelta) -> timedelta:
    """The contract's bound on replacing a leader that died, froze or lost the database."""
    return max(3 * interval, timedelta(seconds=15)) + interval


class Action(StrEnum):
    KEEP = "keep"  # ours: renew it
    TAKE = "take"  # free, expired or its holder gone: take it with the next epoch
    WAIT = "wait"  # another replica holds it: stand by


class Why(StrEnum):
    OURS = "ours"
    FREE = "never taken"
    EXPIRED = "expired"
    HOLDER_GONE = "its holder's process is gone"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    why: Why
    lease: Lease  # the row to write (KEEP, TAKE), or the row as it stands (WAIT)


def plan(current: Lease, me: str, now: datetime, terms: Terms, holder_gone: bool) -> Plan:
    """What replica `me` does with the lease at the database's `now`; `holder_gone` says the
    holder is a process of this host that no longer exists."""
    until = now + terms.duration
    if current.holder == me:
        return Plan(Action.KEEP, Why.OURS, replace(current, expires_at=until))
    why = _why_free(current, now, holder_gone)
    if why is None:
        return Plan(Action.WAIT, Why.HELD, current)
    return Plan(Action.TAKE, why, Lease(me, current.epoch + 1, now, until))


def _why_free(current: Lease, now: datetime, holder_gone: bool) -> Why | None:
    if current.holder is None:
        return Why.FREE
    if current.expires_at is None or current.expires_at <= now:
        return Why.EXPIRED
    return Why.HOLDER_GONE if holder_gone else None


def released(current: Lease, now: datetime) -> Lease:
    """The lease given up at `now` (a clean stop): a standby takes it at its next tick. The
    holder stays recorded, so `status` still says who led last."""
    return replace(current, expires_at=min(now, current.expires_at or now))


def acting(renewed_at: float | None, now: float, terms: Terms) -> bool:
    """Whether a holder whose last successful renewal started at monotonic `renewed_at` still
    counts itself the leader at monotonic `now`."""
    return renewed_at is not None and now - renewed_at < terms.acting_for.total_seconds()


# -- what status shows -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leadership:
    """The leader as `status` shows it."""

    host: str
    pid: int
    epoch: int
    since: datetime | None
    expires_at: datetime | None
    expired: bool  # judged by the database's clock: nobody leads until a replica takes it


def leadership(current: Lease, now: datetime) -> Leadership | None:
    """Who leads (or led last) at the database's `now`; None when no lease was ever taken."""
    parts = holder_parts(current.holder)
    if parts is None:
        return None
    host, pid = parts
    expired = current.expires_at is None or current.expires_at <= now
    return Leadership(host, pid, current.epoch, current.since, current.expires_at, expired)


def holder_parts(token: str | None) -> tuple[str, int] | None:
    """Host and pid of a "host:pid:start" token; None when it is not one."""
    if not token:
        return None
    host, sep, rest = token.partition(":")
    pid, _, _start = rest.partition(":")
    if not sep or not pid.isdigit():
        return None
    return host, int(pid)
