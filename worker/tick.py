"""One tick, the same for `check` and every scheduled run: fetch, store, evaluate, notify, deliver."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import requests
from sqlalchemy.orm import Session, sessionmaker

from worker import store
from worker.domain import (
    AlertState,
    FetchKind,
    FetchOutcome,
    FetchRecord,
    Figures,
    Message,
    Reading,
    Reason,
)
from worker.lifecycle import Policy, notifies, step
from worker.messages import render
from worker.openrouter import Endpoint, fetch_credits
from worker.outbox import Outbox
from worker.redact import Redactor
from worker.retention import Pruned, Retention
from worker.rules import Facts, evaluate
from worker.settings import Rule, Settings
from worker.snapshot import TickReport, Transition, figures, take

log = logging.getLogger("creditwatch.tick")
T = TypeVar("T")

GUARD_MARGIN = 2.0


def worst_case_seconds(settings: Settings, delivery_seconds: float) -> float:
    """The longest a tick can take: fetch, delivery, and the database's bound on its calls."""
    fetch = settings.openrouter.timeout.total_seconds() + GUARD_MARGIN
    database = 3 * settings.database.timeout.total_seconds()  # store, deliver's claims, retention
    return fetch + delivery_seconds + database


@dataclass(frozen=True)
class Deps:
    """Everything a tick touches, built once by worker.app (the outbox and retention keep
    their own per-process state)."""

    settings: Settings
    sessions: sessionmaker[Session]
    http: requests.Session
    endpoint: Endpoint
    outbox: Outbox
    retention: Retention
    redact: Redactor


def run_tick(deps: Deps, now: datetime) -> TickReport:
    """Run one tick at wall-clock `now`; database errors propagate to the shell."""
    started = time.monotonic()
    outcome = fetch_bounded(deps)
    evaluated = _store_and_evaluate(deps, now, outcome)
    delivery = deps.outbox.deliver(now)
    _retain(deps, now)
    settings = deps.settings
    last = FetchRecord(now, outcome.kind, outcome.message or None)
    snap = take(now, evaluated.figures, settings.forecast.window, last, settings.rules, evaluated.states,
                delivery.left_waiting(evaluated.waiting))
    return TickReport(outcome, snap, evaluated.transitions, delivery, time.monotonic() - started)


def fetch_bounded(deps: Deps) -> FetchOutcome:
    """The fetch, with a last-resort wall-clock guard: the fetch ends at its own deadline in
    every phase, but a name lookup (getaddrinfo) cannot be interrupted."""
    limit = deps.endpoint.timeout + GUARD_MARGIN
    timed_out = FetchOutcome(FetchKind.TRANSIENT, message=f"timed out after {deps.endpoint.timeout:g}s")
    return _bounded(lambda: fetch_credits(deps.http, deps.endpoint), limit, timed_out)


def _bounded(fn: Callable[[], T], seconds: float, fallback: T) -> T:
    box: list[T] = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True, name="cw-bounded")
    worker.start()
    worker.join(seconds)
    return box[0] if box else fallback


@dataclass(frozen=True)
class _Evaluated:
    figures: Figures
    transitions: list[Transition]
    states: dict[str, AlertState]
    waiting: dict[str, int]  # undelivered messages per channel once this tick's were queued


def _store_and_evaluate(deps: Deps, now: datetime, outcome: FetchOutcome) -> _Evaluated:
    settings = deps.settings
    with store.tick_transaction(deps.sessions) as session:
        streak = store.record_fetch(session, now, outcome)
        session.flush()
        history = store.forecast_history(session, now - settings.history_span, now)
        fresh = Reading(now, outcome.total_credits or 0.0, outcome.total_usage or 0.0) if outcome.ok else None
        known = fresh or store.latest_reading(session)
        shown = figures(known, history, now, settings.forecast.window)
        states = store.load_states(session, [r.name for r in settings.rules])
        facts = Facts(now, fresh, history, streak)
        transitions, messages, final = _step_all(deps, now, facts, states, shown)
        for rule in settings.rules:
            if final[rule.name] != states[rule.name]:
                store.save_state(session, final[rule.name], rule.severity, now)
        store.enqueue(session, messages, now)
        session.flush()
        waiting = store.backlog_counts(session)
    return _Evaluated(shown, transitions, final, waiting)


def _step_all(
    deps: Deps, now: datetime, facts: Facts, states: dict[str, AlertState], shown: Figures
) -> tuple[list[Transition], list[Message], dict[str, AlertState]]:
    transitions: list[Transition] = []
    messages: list[Message] = []
    final = dict(states)
    for rule in deps.settings.rules:
        prev = states[rule.name]
        try:
            evaluation = evaluate(rule, _facts_for(facts, prev))
        except Exception as err:  # noqa: BLE001 - one broken rule must not stop the others
            log.error("rule %s failed and was skipped: %s", rule.name, deps.redact(repr(err)))
            continue
        policy = _policy(deps.settings, rule)
        state, reason = step(prev, evaluation, now, policy)
        final[rule.name] = state
        if reason is not Reason.NONE:
            transitions.append(Transition(rule.name, reason))
        if notifies(reason, policy):
            messages += _messages(deps.settings, rule, state, reason, shown, now)
    return transitions, messages, final


def _facts_for(facts: Facts, prev: AlertState) -> Facts:
    return Facts(facts.now, facts.latest, facts.history, facts.streak, prev.firing)


def _policy(settings: Settings, rule: Rule) -> Policy:
    return Policy(rule.pending_for, settings.alerts.repeat_interval, settings.alerts.send_resolved)


def _messages(
    settings: Settings, rule: Rule, state: AlertState, reason: Reason, shown: Figures, now: datetime
) -> Sequence[Message]:
    rendered = render(state, reason, rule.severity, shown, now)
    if not settings.channels_for(rule):
        log.warning("%s: %s (no channel is configured, so nobody is notified)", rendered.title, state.summary)
    return [
        Message(rule.name, channel, reason, rule.severity, rendered.title, rendered.body,
                rendered.notify_type, rendered.key)
        for channel in settings.channels_for(rule)
    ]


def _retain(deps: Deps, now: datetime) -> None:
    """Fold and prune old rows when due (hourly); a failure is logged and never fails the tick."""
    if not deps.retention.due(now):
        return
    try:
        pruned = deps.retention.run(now)
    except Exception as err:  # noqa: BLE001 - retention can wait for the next tick
        log.error("retention failed, will retry at the next tick: %s", deps.redact(repr(err)))
        return
    if pruned != Pruned():
        log.info("retention: folded %d readings, pruned %d rollups, %d attempts, %d finished messages",
                 pruned.folded, pruned.rollups, pruned.attempts, pruned.outbox)
