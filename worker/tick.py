"""One tick, the same for `check` and every scheduled run: fetch, store, evaluate, notify, deliver.

Each account is fetched (its balance, and its keys when a per-key rule watches it) and
then stored and evaluated in a transaction of its own: one account's failure never stops
another's tick. Delivery and retention follow, for all accounts at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import requests
from sqlalchemy.orm import Session, sessionmaker

from worker import keybook, store
from worker.domain import (
    AlertState,
    ApiKey,
    Evaluation,
    FetchKind,
    FetchOutcome,
    FetchRecord,
    Figures,
    KeyRecord,
    Message,
    Reading,
    Reason,
    Severity,
)
from worker.lifecycle import Policy, notifies, step
from worker.messages import render
from worker.openrouter import Endpoint, KeysOutcome, disable_key, fetch_credits, fetch_keys
from worker.outbox import Outbox
from worker.redact import Redactor
from worker.retention import Pruned, Retention
from worker.rules import Facts, KeyRuleBase, evaluate, is_per_key
from worker.settings import Rule, Settings
from worker.snapshot import AccountTick, TickReport, Transition, figures, take

log = logging.getLogger("creditwatch.tick")
T = TypeVar("T")

GUARD_MARGIN = 2.0


def worst_case_seconds(settings: Settings, delivery_seconds: float) -> float:
    """The longest a tick can take: the fetches (balance, then keys, accounts side by side),
    delivery, and the database's bound on its calls."""
    fetch = 2 * settings.openrouter.timeout.total_seconds() + GUARD_MARGIN
    accounts = len(settings.watched)
    database = (2 + accounts) * settings.database.timeout.total_seconds()  # per account, claims, retention
    return fetch + delivery_seconds + database


class KeyBooks:
    """Each account's keys as last written, kept between ticks so that a tick writes only the
    keys that changed (loaded from the database on an account's first tick here)."""

    def __init__(self) -> None:
        self._books: dict[str, dict[str, KeyRecord]] = {}
        self._lock = threading.Lock()

    def stored(self, session: Session, account: str) -> dict[str, KeyRecord]:
        with self._lock:
            known = self._books.get(account)
        return known if known is not None else store.load_keys(session, account)

    def keep(self, account: str, book: dict[str, KeyRecord]) -> None:
        with self._lock:
            self._books[account] = book

    def forget(self, account: str) -> None:
        """After a failed transaction, the database is the truth again."""
        with self._lock:
            self._books.pop(account, None)


@dataclass(frozen=True)
class Deps:
    """Everything a tick touches, built once by worker.app (the outbox, retention and the key
    books keep their own per-process state)."""

    settings: Settings
    sessions: sessionmaker[Session]
    http: requests.Session
    endpoints: Mapping[str, Endpoint]  # per watched account
    outbox: Outbox
    retention: Retention
    redact: Redactor
    books: KeyBooks = field(default_factory=KeyBooks)

    @property
    def endpoint(self) -> Endpoint:
        """The first account's endpoint (the only one without [[accounts]])."""
        return next(iter(self.endpoints.values()))


@dataclass(frozen=True)
class _Fetched:
    account: str
    credits: FetchOutcome
    keys: KeysOutcome | None  # None: no per-key rule watches the account


def run_tick(deps: Deps, now: datetime) -> TickReport:
    """Run one tick at wall-clock `now`; database errors propagate to the shell."""
    started = time.monotonic()
    fetched = fetch_all(deps)
    ticks = [_store_and_evaluate(deps, f, now) for f in fetched]
    delivery = deps.outbox.deliver(now)
    _retain(deps, now)
    accounts = tuple(_with_delivery(t, delivery.left_waiting) for t in ticks)
    return TickReport(accounts, delivery, time.monotonic() - started)


# -- fetch ---------------------------------------------------------------------------------


def fetch_all(deps: Deps) -> list[_Fetched]:
    """Every watched account's fetch, side by side, each bounded on its own."""
    accounts = [a.name for a in deps.settings.watched]
    if len(accounts) == 1:
        return [_fetch_account(deps, accounts[0])]
    results: dict[str, _Fetched] = {}
    threads = [threading.Thread(target=lambda a=a: results.__setitem__(a, _fetch_account(deps, a)),
                                daemon=True, name=f"cw-fetch-{a}") for a in accounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # each fetch ends at its own deadline (and _bounded's guard)
    return [results[a] for a in accounts]


def _fetch_account(deps: Deps, account: str) -> _Fetched:
    endpoint = deps.endpoints[account]
    limit = endpoint.timeout + GUARD_MARGIN
    timed_out = FetchOutcome(FetchKind.TRANSIENT, message=f"timed out after {endpoint.timeout:g}s")
    credits = _bounded(lambda: fetch_credits(deps.http, endpoint), limit, timed_out)
    keys = None
    if any(is_per_key(r) for r in deps.settings.rules_for(account)):
        keys_timed_out = KeysOutcome(FetchKind.TRANSIENT, message=f"timed out after {endpoint.timeout:g}s")
        keys = _bounded(lambda: fetch_keys(deps.http, endpoint), limit, keys_timed_out)
    return _Fetched(account, credits, keys)


def fetch_bounded(deps: Deps) -> FetchOutcome:
    """The first account's balance fetch alone (for tests of the fetch guard)."""
    return _fetch_account(deps, next(iter(deps.endpoints))).credits


def _bounded(fn: Callable[[], T], seconds: float, fallback: T) -> T:
    """`fn()` with a last-resort wall-clock guard: a fetch ends at its own deadline in every
    phase, but a name lookup (getaddrinfo) cannot be interrupted."""
    box: list[T] = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True, name="cw-bounded")
    worker.start()
    worker.join(seconds)
    return box[0] if box else fallback


# -- store and evaluate --------------------------------------------------------------------


@dataclass
class _Evaluated:
    transitions: list[Transition]
    messages: list[Message]
    states: dict[tuple[str, str], AlertState]


def _store_and_evaluate(deps: Deps, fetched: _Fetched, now: datetime) -> AccountTick:
    settings, account = deps.settings, fetched.account
    attempt = _attempt(fetched)
    try:
        with store.tick_transaction(deps.sessions) as session:
            streak = store.record_fetch(session, account, now, fetched.credits, attempt)
            session.flush()
            history = store.forecast_history(session, account, now - settings.history_span, now)
            fresh = _reading(fetched.credits, now)
            shown = figures(fresh or store.latest_reading(session, account), history, now,
                            settings.forecast.window)
            keys = _keys_this_tick(deps, session, account, fetched.keys, now)
            states = store.load_states(session, account)
            facts = Facts(now, fresh, history, streak, account=account, keys_known=keys is not None)
            evaluated = _step_all(deps, facts, states, shown, keys or {})
            for identity, state in evaluated.states.items():
                if state != states.get(identity):
                    store.save_state(session, state, _severity(settings, state.rule), now)
            store.enqueue(session, evaluated.messages, now)
            session.flush()
            waiting = store.backlog_counts(session)
    except Exception:
        deps.books.forget(account)
        raise
    last = FetchRecord(now, attempt.kind, attempt.message or None)
    snap = take(now, shown, settings.forecast.window, last, settings.rules_for(account),
                _by_rule(evaluated.states), waiting, account=account)
    return AccountTick(account, fetched.credits, fetched.keys, snap, tuple(evaluated.transitions))


def _reading(credits: FetchOutcome, now: datetime) -> Reading | None:
    """This tick's reading, when the balance was read."""
    if not credits.ok:
        return None
    return Reading(now, credits.total_credits or 0.0, credits.total_usage or 0.0)


def _attempt(fetched: _Fetched) -> FetchOutcome:
    """How this tick's reading went, as the failure streak counts it: a balance read while the
    keys could not be is still a failed attempt (per-key rules are blind), reading kept."""
    keys, credits = fetched.keys, fetched.credits
    if credits.ok and keys is not None and not keys.ok:
        return FetchOutcome(keys.kind, message=f"GET /keys: {keys.message}", attempts=keys.attempts)
    return credits


def _keys_this_tick(deps: Deps, session: Session, account: str, outcome: KeysOutcome | None,
                    now: datetime) -> dict[str, ApiKey] | None:
    """The account's keys by id when they were read this tick (written as they changed), else None."""
    if outcome is None or not outcome.ok:
        return None
    stored = deps.books.stored(session, account)
    planned = keybook.plan(stored, outcome.keys, now)
    store.save_keys(session, account, planned)
    deps.books.keep(account, keybook.apply(stored, planned))
    return {k.id: k for k in outcome.keys}


def _severity(settings: Settings, rule: str) -> Severity:
    found = next((r for r in settings.rules if r.name == rule), None)
    return found.severity if found else Severity.WARNING


def _by_rule(states: Mapping[tuple[str, str], AlertState]) -> dict[str, list[AlertState]]:
    grouped: dict[str, list[AlertState]] = {}
    for (rule, _), state in states.items():
        grouped.setdefault(rule, []).append(state)
    return grouped


def _step_all(deps: Deps, facts: Facts, states: dict[tuple[str, str], AlertState], shown: Figures,
              keys: Mapping[str, ApiKey]) -> _Evaluated:
    out = _Evaluated([], [], dict(states))
    for rule in deps.settings.rules_for(facts.account):
        try:
            if isinstance(rule, KeyRuleBase):
                _step_keys(deps, rule, facts, out, shown, keys)
            else:
                prev = states.get((rule.name, "")) or AlertState(rule.name, account=facts.account)
                _step_one(deps, rule, _with(facts, prev), prev, out, shown)
        except Exception as err:  # noqa: BLE001 - one broken rule must not stop the others
            log.error("rule %s failed and was skipped: %s", rule.name, deps.redact(repr(err)))
    return out


def _with(facts: Facts, prev: AlertState, key: ApiKey | None = None) -> Facts:
    return Facts(facts.now, facts.latest, facts.history, facts.streak, prev.firing, facts.account, key,
                 facts.keys_known)


def _step_keys(deps: Deps, rule: KeyRuleBase, facts: Facts, out: _Evaluated, shown: Figures,
               keys: Mapping[str, ApiKey]) -> None:
    """One lifecycle per key the rule watches, and for every key it has an alert for (a key
    that went away or was disabled resolves its alert)."""
    known = {key for (name, key) in out.states if name == rule.name}
    for key in keys.values() if facts.keys_known else ():
        if not rule.watches(key):
            continue
        prev = out.states.get((rule.name, key.id))
        if prev is None:
            if not rule.holds(key):
                continue  # quiet and never alerted: nothing to step, nothing to store
            prev = AlertState(rule.name, account=facts.account, key=key.id, key_name=key.shown)
        _step_one(deps, rule, _with(facts, prev, key), prev, out, shown, key=key)
        known.discard(key.id)
    for key_id in sorted(known):  # alerted keys not among this tick's watched ones
        prev = out.states[(rule.name, key_id)]
        still = keys.get(key_id) if facts.keys_known else None
        judged = still if still is not None and rule.watches(still) else None
        _step_one(deps, rule, _with(facts, prev, judged), prev, out, shown, key=judged)


def _step_one(deps: Deps, rule: Rule, facts: Facts, prev: AlertState, out: _Evaluated, shown: Figures,
              evaluation: Evaluation | None = None, key: ApiKey | None = None) -> None:
    evaluation = evaluation or evaluate(rule, facts)
    alerts = deps.settings.alerts
    policy = Policy(rule.pending_for, alerts.repeat_interval, alerts.send_resolved)
    state, reason = step(prev, evaluation, facts.now, policy)
    out.states[(rule.name, prev.key)] = state
    if reason is Reason.NONE:
        return
    out.transitions.append(Transition(rule.name, reason, facts.account, state.key_name))
    if notifies(reason, policy):
        notes = _guard(deps, rule, key, facts.account) if reason is Reason.FIRST else ()
        out.messages += _messages(deps.settings, rule, state, reason, shown, facts.now, notes)


def _guard(deps: Deps, rule: Rule, key: ApiKey | None, account: str) -> tuple[str, ...]:
    """Disable a key whose rule says `disable_keys = true`, unless [guard] dry_run; the line
    the message carries about it."""
    if not isinstance(rule, KeyRuleBase) or not rule.disable_keys or key is None:
        return ()
    if deps.settings.guard.dry_run:
        return ("Guard (dry run): creditwatch would disable this key; set [guard] dry_run = false "
                "to let it.",)
    done = disable_key(deps.http, deps.endpoints[account], key.hash)
    if done.ok:
        log.warning("guard: disabled key %s of account %s (rule %s)", key.shown, account, rule.name)
        return ("Guard: creditwatch disabled this key (PATCH /keys: disabled = true).",)
    log.error("guard: could not disable key %s of account %s: %s", key.shown, account,
              deps.redact(done.message))
    return (f"Guard: creditwatch could not disable this key: {deps.redact(done.message)}",)


def _messages(settings: Settings, rule: Rule, state: AlertState, reason: Reason, shown: Figures,
              now: datetime, notes: Sequence[str]) -> Sequence[Message]:
    rendered = render(state, reason, rule.severity, shown, now, named=settings.several_accounts,
                      notes=notes)
    channels = settings.channels_for(rule)
    if not channels:
        log.warning("%s: %s (no channel is configured, so nobody is notified)", rendered.title, state.summary)
    return [
        Message(rule.name, channel, reason, rule.severity, rendered.title, rendered.body,
                rendered.notify_type, rendered.key, state.account)
        for channel in channels
    ]


def _with_delivery(tick: AccountTick, left: Callable[[dict[str, int]], dict[str, int]]) -> AccountTick:
    """The account's snapshot with the outbox as it stands after delivery."""
    return tick.with_waiting(left(dict(tick.snapshot.waiting)))


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
        log.info("retention: folded %d readings, pruned %d rollups, %d attempts, %d finished messages, "
                 "%d key readings", pruned.folded, pruned.rollups, pruned.attempts, pruned.outbox,
                 pruned.key_readings)
