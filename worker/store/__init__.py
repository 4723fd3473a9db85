"""Every query creditwatch makes, one module per concept; functions take a Session and the
caller owns the transaction. Import them from here: `from worker import store; store.head(...)`."""

from worker.store.alerts import load_states, save_state
from worker.store.base import sessions, tick_transaction
from worker.store.digests import fired_between, mark_digest, newest_digest
from worker.store.keys import delete_key_readings_before, load_keys, save_keys
from worker.store.lease import Fence, database_now, fenced, read_lease, write_lease
from worker.store.messages import (
    backlog,
    backlog_counts,
    channels_waiting,
    claim,
    delete_finished_messages_before,
    drop,
    drop_channels_except,
    enqueue,
    head,
    mark_delivered,
    mark_failed,
    undelivered_count,
)
from worker.store.readings import (
    delete_attempts_before,
    delete_rollups_before,
    fold_readings_before,
    forecast_history,
    history_between,
    last_fetch,
    latest_reading,
    readings_between,
    record_fetch,
)
from worker.store.silences import add_silence, delete_silences_before, expire_silence, silences

__all__ = [
    "Fence",
    "add_silence",
    "backlog",
    "backlog_counts",
    "channels_waiting",
    "claim",
    "database_now",
    "delete_attempts_before",
    "delete_finished_messages_before",
    "delete_key_readings_before",
    "delete_rollups_before",
    "delete_silences_before",
    "drop",
    "drop_channels_except",
    "enqueue",
    "expire_silence",
    "fenced",
    "fired_between",
    "fold_readings_before",
    "forecast_history",
    "head",
    "history_between",
    "last_fetch",
    "latest_reading",
    "load_keys",
    "load_states",
    "mark_delivered",
    "mark_digest",
    "mark_failed",
    "newest_digest",
    "read_lease",
    "readings_between",
    "record_fetch",
    "save_keys",
    "save_state",
    "sessions",
    "silences",
    "tick_transaction",
    "undelivered_count",
    "write_lease",
]
