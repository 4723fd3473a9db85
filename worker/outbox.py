"""Delivering the outbox: one thread and one child process per channel with something due.

Per channel, only the oldest undelivered message is ever sent, so a channel gets its
messages in order across crashes, slow sends and replicas. A failed message backs
off (sendpolicy.backoff) and holds the channel's later messages behind it; one past
`give_up_after` is dropped with an ERROR line.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from worker import procs, store
from worker.delivery import Delivered, Sender
from worker.redact import Redactor
from worker.sendpolicy import Counts, Decision, Head, Outgoing, Policy, decide, lease, next_try
from worker.text import escape_controls

log = logging.getLogger("creditwatch.outbox")

DELIVERY_BUDGET = 20.0  # no new send starts later than this into the delivery phase
JOIN_MARGIN = 5.0  # past the last send's bound, for the child to start and answer
# After a stop request, a send may still start this soon (the tick in hand delivers what
# it enqueued), and everything still running is killed at send_timeout + STOP_MARGIN.
STOP_GRACE = 2.0
STOP_MARGIN = 4.0


@dataclass(frozen=True)
class Config:
    send_timeout: timedelta
    interval: timedelta
    give_up_after: timedelta
    budget: float = DELIVERY_BUDGET

    @property
    def policy(self) -> Policy:
        return Policy(self.interval, self.give_up_after)

    @property
    def worst_case(self) -> float:
        """The longest a delivery phase can take: the budget, then one last send."""
        from worker.delivery import PACING_BOUND, START_TIMEOUT

        return self.budget + START_TIMEOUT + PACING_BOUND + self.send_timeout.total_seconds() + JOIN_MARGIN


SenderFactory = Callable[[str, str, float], Sender]


class _InFlight:
    """The outbox rows this process is sending right now: claims carry the process's
    token, so whether a claim of ours is live is a fact about the process, not an Outbox."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set()

    def add(self, row_id: int) -> None:
        with self._lock:
            self._ids.add(row_id)

    def discard(self, row_id: int) -> None:
        with self._lock:
            self._ids.discard(row_id)

    def __contains__(self, row_id: object) -> bool:
        with self._lock:
            return row_id in self._ids


IN_FLIGHT = _InFlight()


class Outbox:
    """The process's delivery state: claims in flight and acceptances not yet recorded."""

    def __init__(self, sessions: sessionmaker[Session], channels: Mapping[str, str], redact: Redactor,
                 config: Config, make_sender: SenderFactory | None = None) -> None:
        self._sessions = sessions
        self._channels = dict(channels)
        self._redact = redact
        self._config = config
        self._make_sender = make_sender or (lambda name, url, timeout: Sender(name, url, timeout))
        self._stop_at: float | None = None
        self._lock = threading.Lock()
        # Sends the channel accepted but whose record failed (database outage): recorded
        # before anything else is sent, so the message is not sent again.
        self._unrecorded: dict[int, datetime] = {}

    @property
    def worst_case(self) -> float:
        """The longest one delivery phase can take."""
        return self._config.worst_case

    def request_stop(self) -> None:
        """Shutdown: start no send after STOP_GRACE, kill what runs past send_timeout + STOP_MARGIN."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()

    @property
    def _hard_deadline(self) -> float | None:
        if self._stop_at is None:
            return None
        return self._stop_at + self._config.send_timeout.total_seconds() + STOP_MARGIN

    def _may_start(self, started: float) -> bool:
        now = time.monotonic()
        if self._stop_at is not None and now > self._stop_at + STOP_GRACE:
            return False
        return now - started <= self._config.budget

    def deliver(self, now: datetime) -> Counts:
        """Send what is due on every channel, each in its own thread; bounded by worst_case."""
        started = time.monotonic()
        counts = Counts()
        self._record_unrecorded()
        with self._sessions() as session:
            waiting = store.channels_waiting(session)  # one query on a quiet tick
        threads = [
            threading.Thread(target=self._channel, args=(name, url, now, started, counts), daemon=True,
                             name=f"cw-deliver-{name}")
            for name, url in self._channels.items() if name in waiting
        ]
        for thread in threads:
            thread.start()
        deadline = started + self._config.worst_case
        for thread in threads:
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(0.2)  # a stop request may bring the deadline forward
                hard = self._hard_deadline
                if hard is not None:
                    deadline = min(deadline, hard + 1.0)
        return counts

    def drop_removed_channels(self, now: datetime) -> int:
        """Drop the waiting messages of channels no longer in the settings, one ERROR line each."""
        with self._sessions.begin() as session:
            dropped = store.drop_channels_except(session, self._channels, now)
        for channel, key in dropped:
            log.error("dropped %s for channel %s: the channel is no longer in the settings", key,
                      channel)
        return len(dropped)

    # -- one channel ------------------------------------------------------------------------

    def _channel(self, name: str, url: str, now: datetime, started: float, counts: Counts) -> None:
        sender = self._make_sender(name, url, self._config.send_timeout.total_seconds())
        try:
            while self._may_start(started):  # the rest waits for the next tick
                elapsed = time.monotonic() - started
                if not self._step(sender, name, now, now + timedelta(seconds=elapsed), counts):
                    break
        except SQLAlchemyError as err:
            log.error("delivery to channel %s stopped: database error: %s", name,
                      self._redact(store_error(err)))
        except Exception as err:  # noqa: BLE001 - a channel's failure stays with that channel
            log.error("delivery to channel %s failed: %s", name, self._redact(repr(err)))
        finally:
            sender.close()

    def _step(self, sender: Sender, name: str, tick_at: datetime, at: datetime, counts: Counts) -> bool:
        """Handle the channel's head message; whether to go on with the next one."""
        with self._sessions.begin() as session:
            head = store.head(session, name)
            if head is None:
                return False
            decision = decide(head, at, self._config.policy, self._claimer_gone(head))
            if decision is Decision.GIVE_UP:
                if store.drop(session, head, at):
                    counts.add("dropped", name)
                    self._log_give_up(head)
                return True
            if decision is not Decision.SEND:
                return False
        # Marked in flight before the claim and until its outcome is recorded, so no other
        # delivery in this process takes our own claim for a dead one.
        IN_FLIGHT.add(head.id)
        try:
            with self._sessions.begin() as session:
                outgoing = store.claim(session, head, at, lease(self._config.send_timeout), procs.me())
            if outgoing is None:
                return False  # another sender moved it first
            return self._send(sender, outgoing, tick_at, at, counts)
        finally:
            IN_FLIGHT.discard(head.id)

    def _send(self, sender: Sender, msg: Outgoing, tick_at: datetime, at: datetime, counts: Counts) -> bool:
        with _attached(msg.attachment) as attach:
            result = sender.send(msg.id, msg.title, msg.body, msg.notify_type, attach,
                                 until=lambda: self._hard_deadline)
        if isinstance(result, Delivered):
            self._record_delivered(msg.id, at)
            counts.add("delivered", msg.channel)
            return True
        reason = self._redact(escape_controls(result.reason))
        retry_at = next_try(tick_at, msg.attempt, self._config.interval)
        with self._sessions.begin() as session:
            store.mark_failed(session, msg.id, procs.me(), reason, retry_at)
        counts.add("failed", msg.channel)
        log.warning("channel %s did not accept %s (try %d): %s; it stays in the outbox, next try at %s",
                    msg.channel, msg.key, msg.attempt, reason, retry_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return False  # keep the channel's order: later messages wait behind this one

    def _claimer_gone(self, head: Head) -> bool:
        return procs.is_gone(head.claimed_by, head.id in IN_FLIGHT)

    def _record_delivered(self, row_id: int, at: datetime) -> None:
        try:
            with self._sessions.begin() as session:
                store.mark_delivered(session, row_id, at)
        except SQLAlchemyError:
            with self._lock:
                self._unrecorded[row_id] = at
            raise

    def _record_unrecorded(self) -> None:
        with self._lock:
            pending = dict(self._unrecorded)
        for row_id, at in pending.items():
            with self._sessions.begin() as session:
                store.mark_delivered(session, row_id, at)
            with self._lock:
                self._unrecorded.pop(row_id, None)

    def _log_give_up(self, head: Head) -> None:
        last = f"; last error: {head.last_error}" if head.last_error else ""
        log.error("gave up on %s for channel %s after %d tries (give_up_after passed)%s", head.key,
                  head.channel, head.attempts, last)


def store_error(err: SQLAlchemyError) -> str:
    from worker.db import first_line

    return first_line(err)


@contextmanager
def _attached(data: bytes | None) -> Iterator[tuple[str, ...]]:
    """The attachment as a file the sender child can hand to apprise, removed afterwards."""
    if data is None:
        yield ()
        return
    with tempfile.TemporaryDirectory(prefix="creditwatch-") as folder:
        path = Path(folder) / "creditwatch-chart.png"
        path.write_bytes(data)
        yield (str(path),)
