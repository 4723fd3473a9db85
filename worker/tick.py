"""One tick, the same for `check` and every scheduled run: fetch, store, evaluate, notify, deliver."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import requests
from sqlalchemy.orm import Session, sessionmaker

from worker import store
from worker.domain import (
    AlertState,
    ExitCode,
    FetchKind,
    FetchOutcome,
    Message,
    Reading,
    Reason,
    Severity,
)
from worker.forecast import burn_rate, runway_hours
from worker.formatting import money
from worker.lifecycle import Policy, notifies, step
from worker.messages import Context, render
from worker.openrouter import Endpoint, fetch_credits
from worker.outbox import Counts, Outbox
from worker.redact import Redactor
from worker.retention import Pruned, prune
from worker.rules import Facts, evaluate
from worker.settings import Rule, Settings
from worker.verdict import exit_code

log = logging.getLogger("creditwatch.tick")
T = TypeVar("T")

GUARD_MARGIN = 2.0
RETENTION_EVERY = timedelta(hours=1)


def worst_case_seconds(settings: Settings, delivery_seconds: float) -> float:
    """The longest a tick can take: fetch, delivery, and the database's bound on its calls."""
    fetch = settings.openrouter.timeout.total_seconds() + GUARD_MARGIN
    database = 3 * settings.database.timeout.total_seconds()  # store, deliver's claims, retention
    return fetch + delivery_seconds + database


@dataclass
class Deps:
    """Everything a tick touches, built once by the shell."""

    settings: Settings
    sessions: sessionmaker[Session]
    http: requests.Session
    endpoint: Endpoint
    outbox: Outbox
    redact: Redactor = field(default_factory=Redactor)
    retained_at: datetime | None = None  # when retention last ran in this process


@dataclass(frozen=True)
class Transition:
    rule: str
    reason: Reason


@dataclass(frozen=True)
class TickReport:
    outcome: FetchOutcome
    latest: Reading | None
    burn_per_hour: float | None
    runway_hours: float | None
    transitions: list[Transition]
    firing: list[tuple[str, Severity]]
    delivery: Counts
    seconds: float

    @property
    def delivered(self) -> int:
        return Counts.total(self.delivery.delivered)

    @property
    def failed(self) -> int:
        return Counts.total(self.delivery.failed)

    @property
    def exit_code(self) -> ExitCode:
        return exit_code((s for _, s in self.firing), self.outcome.ok)


def run_tick(deps: Deps, now: datetime) -> TickReport:
    """Run one tick at wall-clock `now`; database errors propagate to the shell."""
    started = time.monotonic()
    outcome = fetch_bounded(deps)
    evaluated = _store_and_evaluate(deps, now, outcome)
    delivery = deps.outbox.deliver(now)
    _retain(deps, now)
    return TickReport(
        outcome, evaluated.latest, evaluated.burn, evaluated.runway, evaluated.transitions,
        evaluated.firing, delivery, time.monotonic() - started,
    )


def fetch_bounded(deps: Deps) -> FetchOutcome:
    """The fetch, with a last-resort wall-clock guard around all of it (headers included)."""
    limit = deps.endpoint.timeout + GUARD_MARGIN
    timed_out = FetchOutcome(FetchKind.TRANSIENT, message=f"timed out after {deps.endpoint.timeout:g}s")
    return _bounded(lambda: fetch_credits(deps.http, deps.endpoint), limit, timed_out)


def _bounded(fn: Callable[[], T], seconds: float, fallback: T) -> T:
    box: list[T] = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True, name="cw-bounded")
    worker.start()
    worker.join(seconds)
    return box[0] if box else fallback


@dataclass
class _Evaluated:
    latest: Reading | None
    burn: float | None
    runway: float | None
    transitions: list[Transition]
    firing: list[tuple[str, Severity]]


def _store_and_evaluate(deps: Deps, now: datetime, outcome: FetchOutcome) -> _Evaluated:
    settings = deps.settings
    with store.tick_transaction(deps.sessions) as session:
        streak = store.record_fetch(session, now, outcome)
        session.flush()
        history = store.forecast_history(session, now - settings.history_span, now)
        fresh = Reading(now, outcome.total_credits or 0.0, outcome.total_usage or 0.0) if outcome.ok else None
        known = fresh or store.latest_reading(session)
        burn = burn_rate(history, now, settings.forecast.window)
        runway = runway_hours(known.remaining, burn) if known else None
        ctx = Context(known, burn, runway)
        states = store.load_states(session, [r.name for r in settings.rules])
        transitions, messages, final = _step_all(deps, now, Facts(now, fresh, history, streak), states, ctx)
        for rule, state in final.items():
            if state != states[rule.name]:
                store.save_state(session, state, rule.severity, now)
        store.enqueue(session, messages, now)
    firing = [(r.name, r.severity) for r, s in final.items() if s.firing]
    return _Evaluated(known, burn, runway, transitions, firing)


def _step_all(
    deps: Deps, now: datetime, facts: Facts, states: dict[str, AlertState], ctx: Context
) -> tuple[list[Transition], list[Message], dict[Rule, AlertState]]:
    transitions: list[Transition] = []
    messages: list[Message] = []
    final: dict[Rule, AlertState] = {}
    for rule in deps.settings.rules:
        prev = states[rule.name]
        final[rule] = prev
        try:
            evaluation = evaluate(rule, _facts_for(facts, prev))
        except Exception as err:  # noqa: BLE001 - one broken rule must not stop the others
            log.error("rule %s failed and was skipped: %s", rule.name, deps.redact(repr(err)))
            continue
        policy = _policy(deps.settings, rule)
        state, reason = step(prev, evaluation, now, policy)
        final[rule] = state
        if reason is not Reason.NONE:
            transitions.append(Transition(rule.name, reason))
        if notifies(reason, policy):
            messages += _messages(deps.settings, rule, state, reason, ctx, now)
    return transitions, messages, final


def _facts_for(facts: Facts, prev: AlertState) -> Facts:
    return Facts(facts.now, facts.latest, facts.history, facts.streak, prev.firing)


def _policy(settings: Settings, rule: Rule) -> Policy:
    return Policy(rule.pending_for, settings.alerts.repeat_interval, settings.alerts.send_resolved)


def _messages(
    settings: Settings, rule: Rule, state: AlertState, reason: Reason, ctx: Context, now: datetime
) -> list[Message]:
    rendered = render(state, reason, rule.severity, ctx, now)
    if not settings.channels_for(rule):
        log.warning("%s: %s (no channel is configured, so nobody is notified)", rendered.title, state.summary)
    return [
        Message(rule.name, channel, reason, rule.severity, rendered.title, rendered.body,
                rendered.notify_type, rendered.key)
        for channel in settings.channels_for(rule)
    ]


def _retain(deps: Deps, now: datetime) -> None:
    """Fold and prune old rows, at most once an hour (rollups are hourly, the cut-off
    moves one interval a tick); a failure is logged and never fails the tick."""
    last = deps.retained_at
    if last is not None and last <= now < last + RETENTION_EVERY:
        return
    db = deps.settings.database
    try:
        pruned = prune(deps.sessions, now, db.keep_raw, db.keep_rollups)
    except Exception as err:  # noqa: BLE001 - retention can wait for the next tick
        log.error("retention failed, will retry at the next tick: %s", deps.redact(repr(err)))
        return
    deps.retained_at = now
    if pruned != Pruned():
        log.info("retention: folded %d readings, pruned %d rollups, %d attempts, %d delivered messages",
                 pruned.folded, pruned.rollups, pruned.attempts, pruned.outbox)


def summary_line(report: TickReport) -> str:
    """The one log line per tick."""
    balance = money(report.latest.remaining) if report.latest else "unknown"
    outcome = report.outcome
    tries = f", {outcome.attempts} attempts" if outcome.attempts > 1 else ""
    fetch = "ok" if outcome.ok else f"{outcome.kind.value} ({outcome.message}{tries})"
    def names(reason: Reason) -> str:
        return ",".join(t.rule for t in report.transitions if t.reason is reason) or "-"
    return (
        f"tick fetch={fetch} balance={balance} duration={report.seconds:.2f}s "
        f"fired={names(Reason.FIRST)} repeated={names(Reason.REPEAT)} resolved={names(Reason.RESOLVED)} "
        f"delivered={report.delivered} failed={report.failed}"
    )
