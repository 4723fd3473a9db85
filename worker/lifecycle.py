"""The alert lifecycle: a pure step from one tick's condition to state and a reason.

inactive -> pending (inside `for`) -> firing (FIRST) -> firing (REPEAT every
repeat_interval) -> inactive (RESOLVED). UNKNOWN keeps everything as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from worker.domain import AlertState, Condition, Evaluation, Reason, Status


@dataclass(frozen=True, slots=True)
class Policy:
    pending_for: timedelta
    repeat_interval: timedelta
    send_resolved: bool = True


def step(
    prev: AlertState, evaluation: Evaluation, now: datetime, policy: Policy
) -> tuple[AlertState, Reason]:
    """Advance one alert by one tick; the reason says which notification, if any, is due."""
    if evaluation.condition is Condition.UNKNOWN:
        return prev, Reason.NONE
    if evaluation.condition is Condition.FALSE:
        return _clear(prev, evaluation)
    if prev.status is Status.FIRING:
        return _keep_firing(prev, evaluation, now, policy)
    return _start(prev, evaluation, now, policy)


def _clear(prev: AlertState, evaluation: Evaluation) -> tuple[AlertState, Reason]:
    was_firing = prev.status is Status.FIRING
    state = replace(
        prev, status=Status.INACTIVE, pending_since=None, firing_since=None, summary=evaluation.summary
    )
    return state, (Reason.RESOLVED if was_firing else Reason.NONE)


def _start(
    prev: AlertState, evaluation: Evaluation, now: datetime, policy: Policy
) -> tuple[AlertState, Reason]:
    since = prev.pending_since if prev.status is Status.PENDING else now
    assert since is not None  # a pending alert always has pending_since
    if now - since < policy.pending_for:
        pending = replace(prev, status=Status.PENDING, pending_since=since, summary=evaluation.summary)
        return pending, Reason.NONE
    # The alert's identity (rule, account, key) carries over; its firing period starts anew.
    state = replace(prev, status=Status.FIRING, pending_since=None, firing_since=now, last_sent_at=now,
                    period=prev.period + 1, repeats=0, summary=evaluation.summary)
    return state, Reason.FIRST


def _keep_firing(
    prev: AlertState, evaluation: Evaluation, now: datetime, policy: Policy
) -> tuple[AlertState, Reason]:
    last = prev.last_sent_at or now
    if last > now:
        # The clock was stepped back past our last send: restart the reminder
        # period from now rather than stay silent until the clock catches up.
        return replace(prev, last_sent_at=now, summary=evaluation.summary), Reason.NONE
    if now - last >= policy.repeat_interval:
        again = replace(prev, last_sent_at=now, repeats=prev.repeats + 1, summary=evaluation.summary)
        return again, Reason.REPEAT
    return replace(prev, summary=evaluation.summary), Reason.NONE


def notifies(reason: Reason, policy: Policy) -> bool:
    """Whether a transition sends a notification under the policy."""
    if reason is Reason.RESOLVED:
        return policy.send_resolved
    return reason is not Reason.NONE
