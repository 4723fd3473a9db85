"""What every output shows, computed once: the snapshot that `status` (text and JSON), the
`check` line, the tick's log line, `/metrics` and the status page all render.

Pure: the shell loads its inputs (from the tick in hand, or from the store for `status`)
and renders the result; burn and runway are computed here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from worker.domain import (
    AlertState,
    ExitCode,
    FetchOutcome,
    FetchRecord,
    Figures,
    KeyRecord,
    Reading,
    Reason,
    Severity,
    Silence,
    Status,
)
from worker.forecast import burn_rate, covered, runway_hours
from worker.sendpolicy import Backlog, Counts
from worker.settings_base import DEFAULT_ACCOUNT, RuleBase
from worker.verdict import exit_code


def figures(latest: Reading | None, history: Sequence[Reading], now: datetime, window: timedelta) -> Figures:
    """Burn rate over `window` before `now`, and the runway it leaves the latest balance."""
    burn = burn_rate(history, now, window)
    runway = runway_hours(latest.remaining, burn) if latest is not None else None
    return Figures(latest, burn, runway, covered(history, now, window) if burn is not None else None)


@dataclass(frozen=True, slots=True)
class AlertView:
    """A firing or pending alert as outputs show it; `fires_at` only while pending; `key` (the
    key's name and masked label) only for a per-key rule."""

    rule: str
    severity: Severity
    status: Status
    since: datetime | None
    summary: str
    fires_at: datetime | None = None
    account: str = DEFAULT_ACCOUNT
    key: str = ""

    @property
    def subject(self) -> str:
        """The rule, and the key it is about: `key-near-limit[ci-runner (sk-or...)]`."""
        return f"{self.rule}[{self.key}]" if self.key else self.rule


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `status` shows of one account, as of `now`."""

    now: datetime
    figures: Figures
    window: timedelta
    last_fetch: FetchRecord | None
    firing: tuple[AlertView, ...]
    pending: tuple[AlertView, ...]
    waiting: Mapping[str, int]  # undelivered messages per channel (of every account)
    backlog: tuple[Backlog, ...] = ()  # each waiting channel's oldest message (status only)
    account: str = DEFAULT_ACCOUNT
    keys: tuple[KeyRecord, ...] = ()  # the account's keys as last read (status only)
    silences: tuple[Silence, ...] = ()  # those that cover this account and have not ended (status only)

    @property
    def latest(self) -> Reading | None:
        return self.figures.latest

    @property
    def undelivered(self) -> int:
        return sum(self.waiting.values())


def take(now: datetime, figures: Figures, window: timedelta, last_fetch: FetchRecord | None,
         rules: Iterable[RuleBase], states: Mapping[str, Sequence[AlertState]], waiting: Mapping[str, int],
         backlog: Sequence[Backlog] = (), *, account: str = DEFAULT_ACCOUNT,
         keys: Sequence[KeyRecord] = (), silences: Sequence[Silence] = ()) -> Snapshot:
    """The snapshot of `states` (by rule) under the rules in force (their severity and `for`,
    in case the settings were edited while an alert fires); alerts of rules no longer
    configured are left out."""
    firing: list[AlertView] = []
    pending: list[AlertView] = []
    for rule in rules:
        for state in states.get(rule.name, ()):
            if state.status is Status.FIRING:
                firing.append(AlertView(rule.name, rule.severity, state.status, state.firing_since,
                                        state.summary, account=account, key=state.key_name))
            elif state.status is Status.PENDING:
                since = state.pending_since
                fires_at = since + rule.pending_for if since is not None else None
                pending.append(AlertView(rule.name, rule.severity, state.status, since, state.summary,
                                         fires_at, account, state.key_name))
    mine = tuple(x for x in silences if x.account in (None, account) and x.ends_at > now)
    return Snapshot(now, figures, window, last_fetch, _oldest_first(firing), _oldest_first(pending),
                    dict(waiting), tuple(backlog), account, tuple(keys), mine)


def _oldest_first(alerts: list[AlertView]) -> tuple[AlertView, ...]:
    return tuple(sorted(alerts, key=lambda a: (a.since is None, a.since or datetime.min, a.rule, a.key)))


@dataclass(frozen=True)
class Transition:
    rule: str
    reason: Reason
    account: str = DEFAULT_ACCOUNT
    key: str = ""  # the key's name, for a per-key rule


@dataclass(frozen=True)
class AccountTick:
    """What one tick did for one account."""

    account: str
    outcome: FetchOutcome  # the balance fetch
    keys: object | None  # the keys fetch (openrouter.KeysOutcome), when a per-key rule needs it
    snapshot: Snapshot
    transitions: tuple[Transition, ...]

    @property
    def read_ok(self) -> bool:
        """The balance, and the keys when needed, were read."""
        return self.outcome.ok and (self.keys is None or bool(getattr(self.keys, "ok", False)))

    def with_waiting(self, waiting: Mapping[str, int]) -> AccountTick:
        return replace(self, snapshot=replace(self.snapshot, waiting=dict(waiting)))


@dataclass(frozen=True)
class TickReport:
    """What one tick did for every account, and the snapshots every output of it renders.
    The one-account properties (`outcome`, `snapshot`, `latest`...) speak of the first account."""

    accounts: tuple[AccountTick, ...]
    delivery: Counts
    seconds: float

    @property
    def snapshot(self) -> Snapshot:
        return self.accounts[0].snapshot

    @property
    def snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(a.snapshot for a in self.accounts)

    @property
    def outcome(self) -> FetchOutcome:
        """The first failed balance fetch of any account, else the first account's."""
        failed = [a.outcome for a in self.accounts if not a.outcome.ok]
        return failed[0] if failed else self.accounts[0].outcome

    @property
    def transitions(self) -> list[Transition]:
        return [t for a in self.accounts for t in a.transitions]

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
        return [(a.rule, a.severity) for s in self.snapshots for a in s.firing]

    @property
    def delivered(self) -> int:
        return Counts.total(self.delivery.delivered)

    @property
    def failed(self) -> int:
        return Counts.total(self.delivery.failed)

    @property
    def exit_code(self) -> ExitCode:
        """Most severe firing alert of any account; UNKNOWN when an account's balance could not
        be read and nothing firing says more."""
        return exit_code((sev for _, sev in self.firing), all(a.outcome.ok for a in self.accounts))
