"""Retention: fold readings older than keep_raw into hourly rollups, prune the rest.

Each batch is its own short transaction, so pruning a year of backlog never
holds a long lock; a tick does at most MAX_BATCHES and leaves the rest for later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.domain import Reading
from worker.rollup import Rollup, fold
from worker.sendpolicy import OutboxStatus
from worker.tables import FetchAttemptRow, OutboxRow, ReadingRow, RollupRow

BATCH = 500
MAX_BATCHES = 20


@dataclass(frozen=True)
class Pruned:
    folded: int = 0
    rollups: int = 0
    attempts: int = 0
    outbox: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))


def prune(factory: sessionmaker[Session], now: datetime, keep_raw: timedelta,
          keep_rollups: timedelta) -> Pruned:
    """Run retention in bounded batches; returns what it removed."""
    total = Pruned()
    for _ in range(MAX_BATCHES):
        with factory.begin() as session:
            step = _one_batch(session, now - keep_raw, now - keep_rollups)
        total += step
        if step == Pruned():
            break
    return total


def _one_batch(session: Session, raw_cutoff: datetime, rollup_cutoff: datetime) -> Pruned:
    return Pruned(
        folded=_fold_batch(session, raw_cutoff),
        rollups=_delete_where(session, RollupRow, RollupRow.hour < rollup_cutoff, RollupRow.hour),
        attempts=_prune_attempts(session, raw_cutoff),
        outbox=_delete_where(session, OutboxRow, (OutboxRow.status == OutboxStatus.DELIVERED.value)
                             & (OutboxRow.delivered_at < raw_cutoff), OutboxRow.delivered_at)
        + _delete_where(session, OutboxRow, (OutboxRow.status == OutboxStatus.DROPPED.value)
                        & (OutboxRow.dropped_at < raw_cutoff), OutboxRow.dropped_at),
    )


def _fold_batch(session: Session, cutoff: datetime) -> int:
    rows = list(session.scalars(
        select(ReadingRow).where(ReadingRow.fetched_at < cutoff)
        .order_by(ReadingRow.fetched_at).limit(BATCH)
    ))
    if not rows:
        return 0
    readings = [Reading(r.fetched_at, r.total_credits, r.total_usage) for r in rows]
    hours = {r.fetched_at.replace(minute=0, second=0, microsecond=0) for r in rows}
    existing = {row.hour: _rollup(row) for row in session.scalars(
        select(RollupRow).where(RollupRow.hour.in_(hours)))}
    for roll in fold(readings, existing).values():
        session.merge(RollupRow(**asdict(roll)))
    session.execute(delete(ReadingRow).where(ReadingRow.id.in_([r.id for r in rows])))
    return len(rows)


def _rollup(row: RollupRow) -> Rollup:
    return Rollup(**{f: getattr(row, f) for f in Rollup.__dataclass_fields__})


def _prune_attempts(session: Session, cutoff: datetime) -> int:
    # The newest attempt carries the failure streak: never prune it.
    newest = session.scalar(select(func.max(FetchAttemptRow.id)))
    if newest is None:
        return 0
    return _delete_where(session, FetchAttemptRow,
                         (FetchAttemptRow.at < cutoff) & (FetchAttemptRow.id < newest),
                         FetchAttemptRow.at)


def _delete_where(session: Session, table: type, condition: object, order: object) -> int:
    """Delete one batch; `order` must be the indexed column the condition bounds, so that
    a tick with nothing to prune reads one index entry, not the table."""
    key = table.__mapper__.primary_key[0]  # type: ignore[attr-defined]
    ids = list(session.scalars(select(key).where(condition).order_by(order).limit(BATCH)))  # type: ignore[arg-type]
    if ids:
        session.execute(delete(table).where(key.in_(ids)))
    return len(ids)


def rollup_points(session: Session, start: datetime, end: datetime) -> list[Reading]:
    """Readings reconstructed from rollups whose hour overlaps [start, end], oldest first."""
    rows = session.scalars(
        select(RollupRow).where(RollupRow.hour >= start - timedelta(hours=1), RollupRow.hour <= end)
        .order_by(RollupRow.hour)
    )
    return [p for row in rows for p in _rollup(row).points() if start <= p.fetched_at <= end]
