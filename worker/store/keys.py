"""API keys: each account's keys as last read, and their history.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from worker.domain import (
    KeyRecord,
)
from worker.keybook import KeyPlan
from worker.store.base import _delete_batch
from worker.tables import (
    ApiKeyRow,
    KeyReadingRow,
)


def load_keys(session: Session, account: str) -> dict[str, KeyRecord]:
    """The account's keys as last written, by id."""
    rows = session.scalars(select(ApiKeyRow).where(ApiKeyRow.account == account))
    return {row.key_id: _key_record(row) for row in rows}


def _key_record(row: ApiKeyRow) -> KeyRecord:
    return KeyRecord(row.key_id, row.name, row.label, row.limit, row.limit_remaining, row.limit_reset,
                     row.usage, row.usage_daily, row.usage_weekly, row.usage_monthly, row.seen_at)


def save_keys(session: Session, account: str, planned: KeyPlan) -> None:
    """Write the plan: current rows upserted, a history row each, forgotten keys deleted."""
    if planned.gone:
        session.execute(delete(ApiKeyRow).where(ApiKeyRow.account == account,
                                                ApiKeyRow.key_id.in_(planned.gone)))
    if not planned.write:
        return
    ids = [r.id for r in planned.write]
    session.execute(delete(ApiKeyRow).where(ApiKeyRow.account == account, ApiKeyRow.key_id.in_(ids)))
    current = [_key_row(account, r) for r in planned.write]
    session.execute(insert(ApiKeyRow), current)
    history = [{k: v for k, v in row.items() if k not in ("name", "label", "limit_reset", "seen_at")}
               | {"fetched_at": row["seen_at"]} for row in current]
    session.execute(insert(KeyReadingRow), history)


def _key_row(account: str, r: KeyRecord) -> dict[str, Any]:
    return {"account": account, "key_id": r.id, "name": r.name[:200], "label": r.label[:100],
            "limit": r.limit, "limit_remaining": r.limit_remaining, "limit_reset": r.limit_reset,
            "usage": r.usage, "usage_daily": r.usage_daily, "usage_weekly": r.usage_weekly,
            "usage_monthly": r.usage_monthly, "seen_at": r.seen_at}


def delete_key_readings_before(session: Session, cutoff: datetime, batch: int) -> int:
    return _delete_batch(session, KeyReadingRow, KeyReadingRow.fetched_at < cutoff, KeyReadingRow.fetched_at,
                         batch)
