"""Every query creditwatch makes, one module per concept; functions take a Session and the
caller owns the transaction. Import them from here: `from worker import store; store.head(...)`."""

from worker.store.alerts import load_states, save_state
from worker.store.base import sessions, tick_transaction
from worker.store.keys import delete_key_readings_before, load_keys, save_keys
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

__all__ = [
    "backlog", "backlog_counts", "channels_waiting", "claim", "delete_attempts_before",
    "delete_finished_messages_before", "delete_key_readings_before", "delete_rollups_before", "drop",
    "drop_channels_except", "enqueue", "fold_readings_before", "forecast_history", "head",
    "history_between", "last_fetch", "latest_reading", "load_keys", "load_states", "mark_delivered",
    "mark_failed", "readings_between", "record_fetch", "save_keys", "save_state", "sessions",
    "tick_transaction", "undelivered_count",
]
