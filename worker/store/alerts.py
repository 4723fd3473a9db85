"""Alert states, per account, rule and key.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.domain import (
    AlertState,
    Severity,
    Status,
)
from worker.tables import (
    AlertStateRow,
)


def load_states(session: Session, account: str) -> dict[tuple[str, str], AlertState]:
    """Every stored alert of the account, by (rule, key); an alert not stored is inactive."""
    rows = session.scalars(select(AlertStateRow).where(AlertStateRow.account == account))
    return {(row.rule, row.key): state_of(row) for row in rows}


def state_of(row: AlertStateRow) -> AlertState:
    return AlertState(
        rule=row.rule, status=Status(row.status), pending_since=row.pending_since,
        firing_since=row.firing_since, last_sent_at=row.last_sent_at,
        period=row.period, repeats=row.repeats, summary=row.summary,
        account=row.account, key=row.key, key_name=row.key_name, muted=row.muted,
    )


def save_state(session: Session, state: AlertState, severity: Severity, now: datetime) -> None:
    row = session.get(AlertStateRow, state.identity) or AlertStateRow(
        account=state.account, rule=state.rule, key=state.key)
    row.key_name = state.key_name[:300]
    row.status = state.status.value
    row.severity = severity.value
    row.pending_since = state.pending_since
    row.firing_since = state.firing_since
    row.last_sent_at = state.last_sent_at
    row.period = state.period
    row.repeats = state.repeats
    row.summary = state.summary[:500]
    row.muted = state.muted
    row.updated_at = now
    session.add(row)
