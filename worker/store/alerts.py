"""Alert states, per account, rule and key.
Functions take a Session; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.orm import Session

from worker.domain import (
    AlertState,
    Severity,
    Status,
)
from worker.store.base import plain, table_of
from worker.tables import (
    AlertStateRow,
)

# An alert's columns, plain (no ORM objects): what state_of reads.
STATES = select(
    AlertStateRow.rule, AlertStateRow.status, AlertStateRow.pending_since, AlertStateRow.firing_since,
    AlertStateRow.last_sent_at, AlertStateRow.period, AlertStateRow.repeats, AlertStateRow.summary,
    AlertStateRow.account, AlertStateRow.key, AlertStateRow.key_name, AlertStateRow.muted,
)
_OF_ACCOUNT = STATES.where(AlertStateRow.account == bindparam("account"))
_TABLE = table_of(AlertStateRow)
# The row's own columns are set from the parameters' keys; the ones it is found by are named apart.
_UPDATE = update(_TABLE).where(_TABLE.c.account == bindparam("of_account"),
                               _TABLE.c.rule == bindparam("of_rule"), _TABLE.c.key == bindparam("of_key"))
_INSERT = insert(_TABLE)


def load_states(session: Session, account: str) -> dict[tuple[str, str], AlertState]:
    """Every stored alert of the account, by (rule, key); an alert not stored is inactive."""
    states = (state_of(row) for row in plain(session).execute(_OF_ACCOUNT, {"account": account}).all())
    return {(state.rule, state.key): state for state in states}


def state_of(row: Row[*tuple[Any, ...]]) -> AlertState:
    """The alert of a row of STATES."""
    return AlertState(
        rule=row.rule, status=Status(row.status), pending_since=row.pending_since,
        firing_since=row.firing_since, last_sent_at=row.last_sent_at,
        period=row.period, repeats=row.repeats, summary=row.summary,
        account=row.account, key=row.key, key_name=row.key_name, muted=row.muted,
    )


def save_state(session: Session, state: AlertState, severity: Severity, now: datetime) -> None:
    """Update the alert's row, or insert it when there is none yet (one statement when it exists)."""
    values = {
        "key_name": state.key_name[:300], "status": state.status.value, "severity": severity.value,
        "pending_since": state.pending_since, "firing_since": state.firing_since,
        "last_sent_at": state.last_sent_at, "period": state.period, "repeats": state.repeats,
        "summary": state.summary[:500], "muted": state.muted, "updated_at": now,
    }
    found = {"of_account": state.account, "of_rule": state.rule, "of_key": state.key}
    if session.execute(_UPDATE, found | values).rowcount == 0:  # type: ignore[attr-defined]
        session.execute(_INSERT, {"account": state.account, "rule": state.rule, "key": state.key} | values)
