"""`run`'s part in the election: take or renew the leader lease at each tick, keep renewing it
from a thread of its own while leading (so a slow tick never loses it), and give it up at
shutdown so a standby takes over at its next tick. The decisions are worker.lease's; the
queries worker.store.lease's; this module does the I/O, the logging and the fence.

Every lease transaction reads the database's clock with the row, and the tick that follows
runs at that clock (`Standing.now`): readings, alert times and claims are all stamped by
the one clock every replica agrees on, whichever replica leads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from worker import procs, store
from worker.db import first_line
from worker.lease import Action, Lease, Plan, Terms, acting, holder_parts, plan, released, terms_for
from worker.store.lease import Fence, read_lease, write_lease

log = logging.getLogger("creditwatch.leader")


@dataclass(frozen=True, slots=True)
class Standing:
    """Where this replica stands after one lease transaction."""

    leading: bool
    took: bool  # it took the lease in this step (a new epoch began)
    now: datetime  # the database's clock, read with the lease
    lease: Lease  # the row as it stands now

    @property
    def line(self) -> str:
        """One line for logs and systemd's STATUS=."""
        if self.leading:
            return f"leading (epoch {self.lease.epoch})"
        return f"standby: {describe(self.lease.holder)} leads (epoch {self.lease.epoch})"


def describe(holder: str | None) -> str:
    parts = holder_parts(holder)
    return f"{parts[0]} pid {parts[1]}" if parts else "nobody"


class Leader:
    """This replica's lease: `step` at each tick, a keeper thread renewing it while leading,
    `close` at shutdown. Thread-safe; one lease transaction at a time."""

    def __init__(self, engine: Engine, fence: Fence, interval: timedelta, me: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._sessions = store.sessions(engine)  # not fenced: this is what the fence checks against
        self._fence = fence
        self.terms: Terms = terms_for(interval)
        self.me = me or procs.me()
        self._monotonic = monotonic
        self._busy = threading.Lock()  # one lease transaction at a time
        self._lock = threading.Lock()  # the state below
        self._last: Standing | Exception | None = None  # the outcome of the last step
        self._epoch: int | None = None
        self._renewed_at: float | None = None  # monotonic start of the last successful write
        self._seen: Lease | None = None  # the lease as last read, for logging changes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        fence.hold(None, self.me)  # until the first step says otherwise, this replica writes nothing

    @property
    def leading(self) -> bool:
        """Whether this replica holds the lease and renewed it recently enough to act on it."""
        with self._lock:
            return self._epoch is not None and acting(self._renewed_at, self._monotonic(), self.terms)

    def step(self, renew_only: bool = False) -> Standing:
        """Take or renew the lease in one short transaction; database errors propagate.
        `renew_only`: keep it if ours, never take it (the keeper thread)."""
        if not self._busy.acquire(blocking=False):
            # A renewal is in flight (the keeper's): share its outcome. Queueing a second
            # transaction behind it would double the wait on a database that hangs.
            with self._busy, self._lock:
                last = self._last
            if isinstance(last, Exception):
                raise last
            if last is not None:
                return last
            self._busy.acquire()
        try:
            try:
                standing = self._transact(renew_only)
            except Exception as err:
                self._remember(err)
                raise
            self._remember(standing)  # before the release: a step waiting on it reads this
            return standing
        finally:
            self._busy.release()

    def _remember(self, outcome: Standing | Exception) -> None:
        with self._lock:
            self._last = outcome

    def _transact(self, renew_only: bool) -> Standing:
        started = self._monotonic()
        with self._sessions.begin() as session:
            current, now = read_lease(session)
            decided = self._plan(current, now)
            write = decided.action is Action.KEEP or (decided.action is Action.TAKE and not renew_only)
            won = write and write_lease(session, current, decided.lease)
        with self._lock:
            return self._settle(current, decided, won, now, started)

    def _plan(self, current: Lease, now: datetime) -> Plan:
        others = current.holder is not None and current.holder != self.me
        return plan(current, self.me, now, self.terms, others and procs.is_gone(current.holder))

    def _settle(self, current: Lease, decided: Plan, won: bool, now: datetime, started: float) -> Standing:
        """Record what the committed transaction decided, in the fence first."""
        if won:
            took = decided.action is Action.TAKE
            if took:
                self._log_take(current, decided)
            self._epoch, self._renewed_at = decided.lease.epoch, started
            self._fence.hold(decided.lease.epoch, self.me)
            self._seen = decided.lease
            return Standing(True, took, now, decided.lease)
        self._stand_by(current)  # as read: a replica that won the race meanwhile shows next tick
        return Standing(False, False, now, current)

    def _stand_by(self, current: Lease) -> None:
        if self._epoch is not None:
            log.warning("lost the leader lease (epoch %d) to %s (epoch %d): standing by", self._epoch,
                        describe(current.holder), current.epoch)
        elif current.holder is not None and (self._seen is None or (self._seen.holder, self._seen.epoch)
                                             != (current.holder, current.epoch)):
            log.info("standby: %s leads (epoch %d)", describe(current.holder), current.epoch)
        self._epoch, self._renewed_at, self._seen = None, None, current
        self._fence.hold(None, self.me)

    def _log_take(self, current: Lease, decided: Plan) -> None:
        before = "" if current.holder is None else f"; {describe(current.holder)} held epoch {current.epoch}"
        log.info("leading: took the leader lease, epoch %d (it was %s%s)", decided.lease.epoch,
                 decided.why.value, before)

    # -- the keeper and the end ---------------------------------------------------------------

    def start(self) -> None:
        """Renew the lease every terms.renew_every while leading, whatever the ticks do."""
        self._thread = threading.Thread(target=self._keep, daemon=True, name="cw-lease")
        self._thread.start()

    def _keep(self) -> None:
        every = self.terms.renew_every.total_seconds()
        while not self._stop.wait(every):
            with self._lock:
                mine = self._epoch is not None
            if not mine:
                continue
            try:
                self.step(renew_only=True)
            except SQLAlchemyError as err:
                # The ticks report a database that fails, one line each: no second voice here.
                log.debug("could not renew the leader lease: %s", first_line(err))
            except Exception as err:  # noqa: BLE001 - the keeper outlives any one renewal's bug
                log.error("could not renew the leader lease: %r", err)

    def close(self, wait: float = 5.0) -> None:
        """Stop renewing and give the lease up if this replica holds it; errors are logged
        (an unreleased lease simply expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(wait)
        try:
            self._release()
        except SQLAlchemyError as err:
            # INFO: the ticks have said what fails; a standby takes over at the expiry instead.
            log.info("could not give up the leader lease (it expires by itself): %s", first_line(err))

    def _release(self) -> None:
        with self._busy:
            with self._lock:
                epoch = self._epoch
            if epoch is None:
                return
            with self._sessions.begin() as session:
                current, now = read_lease(session)
                if current.holder == self.me and current.epoch == epoch:
                    write_lease(session, current, released(current, now))
            with self._lock:
                self._epoch, self._renewed_at = None, None
                self._fence.hold(None, self.me)
        log.info("gave up the leader lease (epoch %d): a standby takes over at its next tick", epoch)
