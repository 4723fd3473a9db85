"""Whether an alert's message goes out now: silences and inhibition, as pure decisions.

A held-back alert keeps its state (and still counts for `check`'s exit code); the state
remembers what was held back (`muted`), so that when the silence ends or the inhibiting
rule resolves while the alert still fires, it is announced at once: its first message if
that was held back, else a reminder.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime

from worker.domain import AlertState, Reason, Silence
from worker.settings_base import RuleBase


def held_back(rule: RuleBase, account: str, silences: Sequence[Silence], firing: Collection[str],
              now: datetime) -> str | None:
    """Why the rule's messages for `account` are held back now (one line), or None. `firing`
    names the account's rules that fire this tick."""
    silence = next((s for s in silences if s.covers(rule.name, account, now)), None)
    if silence is not None:
        return f"silenced (#{silence.id}) until {silence.ends_at:%Y-%m-%dT%H:%M:%SZ}"
    inhibitor = next((name for name in rule.inhibited_by if name in firing), None)
    if inhibitor is not None:
        return f"inhibited by {inhibitor}, which fires"
    return None


def route(state: AlertState, reason: Reason, held: str | None, notifies: bool,
          now: datetime) -> tuple[AlertState, Reason, bool]:
    """The state to store, the reason of the message, and whether it is sent.

    `reason` and `state` come from the lifecycle; `notifies` says whether the policy sends a
    message for that reason."""
    if reason is Reason.NONE and state.firing and state.muted and held is None:
        # Held back before, free now and still firing: announce it.
        if state.muted == "first":
            return replace(state, muted="", last_sent_at=now), Reason.FIRST, True
        return replace(state, muted="", last_sent_at=now, repeats=state.repeats + 1), Reason.REPEAT, True
    if reason is Reason.RESOLVED and state.muted == "first":
        return replace(state, muted=""), reason, False  # never announced: no "resolved" either
    if not notifies:
        return (replace(state, muted="") if reason is Reason.RESOLVED else state), reason, False
    if held is None:
        return replace(state, muted=""), reason, True
    if reason is Reason.RESOLVED:
        return replace(state, muted=""), reason, False  # nothing left to announce
    muted = "first" if reason is Reason.FIRST or state.muted == "first" else "repeat"
    return replace(state, muted=muted), reason, False
