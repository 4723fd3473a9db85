"""Delivering the outbox: one thread per channel, claims with a lease, order kept per channel."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from worker import store
from worker.delivery import Channel, Delivered, Failed
from worker.redact import Redactor

log = logging.getLogger("creditwatch.tick")

SEND_TIMEOUT = 10.0  # one apprise call, all its targets included
THROTTLE_MARGIN = 6.0  # apprise spaces sends to one service (email: 5.5 s) before its timeout runs
DELIVERY_BUDGET = 20.0  # no new send starts later than this into the delivery phase
# A claim outlives the send it covers, so only a dead sender's rows are taken over.
LEASE = store.CLAIM_LEASE
assert timedelta(seconds=SEND_TIMEOUT + THROTTLE_MARGIN) < LEASE


def deliver(sessions: sessionmaker[Session], channels: Mapping[str, Channel], redact: Redactor,
            now: datetime) -> tuple[int, int]:
    """Send every due outbox row, one thread per channel so a dead one delays no other.

    New sends start only within DELIVERY_BUDGET; a send in flight is waited for
    (it is bounded by SEND_TIMEOUT and the service's own throttle), so a tick
    never leaves a message claimed but unrecorded when it can help it.
    """
    started = time.monotonic()
    counts: dict[str, tuple[int, int]] = {}
    with sessions() as session:
        waiting = store.channels_with_due(session, now)  # one query on a quiet tick
    job = _Job(sessions, redact, now, started)
    threads = [
        threading.Thread(target=_deliver_channel, args=(job, ch, counts), daemon=True,
                         name=f"cw-deliver-{name}")
        for name, ch in channels.items() if name in waiting
    ]
    for t in threads:
        t.start()
    deadline = started + DELIVERY_BUDGET + SEND_TIMEOUT + THROTTLE_MARGIN
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return sum(d for d, _ in counts.values()), sum(f for _, f in counts.values())


@dataclass(frozen=True)
class _Job:
    sessions: sessionmaker[Session]
    redact: Redactor
    now: datetime
    started: float


def _deliver_channel(job: _Job, channel: Channel, counts: dict[str, tuple[int, int]]) -> None:
    delivered = failed = 0
    try:
        with job.sessions() as session:
            ids = store.due_ids(session, channel.name, job.now)
        for row_id in ids:
            elapsed = time.monotonic() - job.started
            if elapsed > DELIVERY_BUDGET:
                break  # the rest waits for the next tick
            ok = _deliver_one(job, channel, row_id, job.now + timedelta(seconds=elapsed))
            if ok is None:
                continue
            delivered, failed = delivered + ok, failed + (not ok)
            if not ok:
                break  # keep the channel's messages in order: later ones wait behind this one
    except Exception as err:  # noqa: BLE001 - a channel's failure stays with that channel
        log.error("delivery to channel %s failed: %s", channel.name, job.redact(repr(err)))
    counts[channel.name] = (delivered, failed)


def _deliver_one(job: _Job, channel: Channel, row_id: int, at: datetime) -> bool | None:
    with job.sessions.begin() as session:
        row = store.claim(session, row_id, at, LEASE)
        if row is None:
            return None
        title, body, kind, key = row.title, row.body, row.notify_type, row.key
    result = channel.send(title, body, kind, SEND_TIMEOUT)
    with job.sessions.begin() as session:
        if isinstance(result, Delivered):
            store.mark_delivered(session, row_id, at)
            return True
        assert isinstance(result, Failed)
        store.mark_failed(session, row_id, job.redact(result.reason))
    log.warning("channel %s did not accept %s: %s; it stays in the outbox", channel.name, key,
                job.redact(result.reason))
    return False
