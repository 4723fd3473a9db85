"""`[alerts] group = true`: one message per channel and tick, holding every notification due
for it. The batch is one outbox row, so the outbox's once-and-in-order promise holds for it
as for any message; each notification inside keeps its own `ref:` line."""

from __future__ import annotations

from collections.abc import Sequence

from worker.domain import Message, Reason, Severity

_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}
_TYPE_RANK = {"success": 0, "info": 1, "warning": 2, "failure": 3}


def group(messages: Sequence[Message], enabled: bool) -> list[Message]:
    """The messages as they go to the outbox: unchanged, or one per channel (in the order of
    each channel's first message) when grouping is on and a channel has several."""
    if not enabled:
        return list(messages)
    by_channel: dict[str, list[Message]] = {}
    for m in messages:
        by_channel.setdefault(m.channel, []).append(m)
    return [batch[0] if len(batch) == 1 else _batch(batch) for batch in by_channel.values()]


def _batch(batch: list[Message]) -> Message:
    worst = max(batch, key=lambda m: _RANK[m.severity]).severity
    notify_type = max((m.notify_type for m in batch), key=lambda t: _TYPE_RANK.get(t, 1))
    firing = sum(m.reason is not Reason.RESOLVED for m in batch)
    resolved = len(batch) - firing
    counted = ", ".join(part for part in (f"{firing} firing" if firing else "",
                                          f"{resolved} resolved" if resolved else "") if part)
    label = "RESOLVED" if not firing else worst.value.upper()
    title = f"[{label}] {len(batch)} notifications ({counted}): " + "; ".join(
        m.title.split("] ", 1)[-1] for m in batch)
    body = "\n\n".join(f"{m.title}\n{m.body}" for m in batch)
    first = batch[0]
    key = f"{first.key}+{len(batch) - 1}"
    return Message(first.rule, first.channel, first.reason, worst, title, body, notify_type, key,
                   first.account)
