"""What every output shows, computed once: the snapshot that `status` (text and JSON), the
`check` line, the tick's log line, `/metrics` and the status page all render.

Pure: the shell loads its inputs (from the tick in hand, or from the store for `status`)
and renders the result; burn and runway are computed here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.domain import (
    AlertState,
    ExitCode,
    FetchOutcome,
    FetchRecord,
    Figures,
    Reading,
    Reason,
    Severity,
    Status,
)
from worker.forecast import burn_rate, runway_hours
from worker.sendpolicy import Backlog, Counts
from worker.settings_base import DEFAULT_ACCOUNT, RuleBase
from worker.verdict import exit_code


def figures(latest: Reading | None, history: Sequence[Reading], now: datetime, window: timedelta) -> Figures:
    """Burn rate over `window` before `now`, and the runway it leaves the latest balance."""
    burn = burn_rate(history, now, window)
    runway = runway_hours(latest.remaining, burn) if latest is not None else None
    return Figures(latest, burn, runway)


@dataclass(frozen=True, slots=True)
class AlertView:
    """A firing or pending alert as outputs show it; `fires_at` only while pending."""

    rule: str
    severity: Severity
    status: Status
    since: datetime | None
    summary: str
    fires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `status` shows, as of `now`."""

    now: datetime
    figures: Figures
    window: timedelta
    last_fetch: FetchRecord | None
    firing: tuple[AlertView, ...]
    pending: tuple[AlertView, ...]
    waiting: Mapping[str, int]  # undelivered messages per channel
    backlog: tuple[Backlog, ...] = ()  # each waiting channel's oldest message (status only)
    account: str = DEFAULT_ACCOUNT

    @property
    def latest(self) -> Reading | None:
        return self.figures.latest

    @property
    def undelivered(self) -> int:
        return sum(self.waiting.values())


def take(now: datetime, figures: Figures, window: timedelta, last_fetch: FetchRecord | None,
         rules: Iterable[RuleBase], states: Mapping[str, AlertState], waiting: Mapping[str, int],
         backlog: Sequence[Backlog] = ()) -> Snapshot:
    """The snapshot of `states` under the rules in force (their severity and `for`, in case
    the settings were edited while an alert fires); alerts of rules no longer configured
    are left out."""
    firing: list[AlertView] = []
    pending: list[AlertView] = []
    for rule in rules:
        state = states.get(rule.name)
        if state is None or state.status is Status.INACTIVE:
            continue
        if state.status is Status.FIRING:
            firing.append(AlertView(rule.name, rule.severity, state.status, state.firing_since,
                                    state.summary))
        else:
            since = state.pending_since
            fires_at = since + rule.pending_for if since is not None else None
            pending.append(AlertView(rule.name, rule.severity, state.status, since, state.summary,
                                     fires_at))
    return Snapshot(now, figures, window, last_fetch, _oldest_first(firing), _oldest_first(pending),
                    dict(waiting), tuple(backlog))


def _oldest_first(alerts: list[AlertView]) -> tuple[AlertView, ...]:
    return tuple(sorted(alerts, key=lambda a: (a.since is None, a.since or datetime.min, a.rule)))


@dataclass(frozen=True)
class Transition:
    rule: str
    reason: Reason


@dataclass(frozen=True)
class TickReport:
    """What one tick did, and the snapshot every output of it renders."""

    outcome: FetchOutcome
    snapshot: Snapshot
    transitions: list[Transition]
    delivery: Counts
    seconds: float

    @property
    def latest(self) -> Reading | None:
        return self.snapshot.latest

    @property
    def burn_per_hour(self) -> float | None:
        return self.snapshot.figures.burn_per_hour

    @property
    def runway_hours(self) -> float | None:
        return self.snapshot.figures.runway_hours

    @property
    def firing(self) -> list[tuple[str, Severity]]:
        return [(a.rule, a.severity) for a in self.snapshot.firing]

    @property
    def delivered(self) -> int:
        return Counts.total(self.delivery.delivered)

    @property
    def failed(self) -> int:
        return Counts.total(self.delivery.failed)

    @property
    def exit_code(self) -> ExitCode:
        return exit_code((a.severity for a in self.snapshot.firing), self.outcome.ok)
