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
from datetime import datetime, timedelta
from typing import TypeVar

import requests
from sqlalchemy.orm import Session, sessionmaker

from worker import digest, keybook, store
from worker.chart import build_chart
from worker.chartrender import render_in_child
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
    Silence,
)
from worker.formatting import format_duration
from worker.grouping import group
from worker.lifecycle import Policy, notifies, step
from worker.messages import Style, render
from worker.openrouter import Endpoint, KeysOutcome, disable_key, fetch_credits, fetch_keys
from worker.outbox import Outbox
from worker.redact import Redactor
from worker.retention import Pruned, Retention
from worker.routing import held_back, route
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
    _digest(deps, now)
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
class _Step:
    """One alert's step this tick, before deciding whether its message goes out."""

    rule: Rule
    state: AlertState
    reason: Reason
    evaluation: Evaluation
    key: ApiKey | None


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
            evaluated = _step_all(deps, facts, states, shown, keys or {}, store.silences(session, now))
            for identity, state in evaluated.states.items():
                if state != states.get(identity):
                    store.save_state(session, state, _severity(settings, state.rule), now)
            store.enqueue(session, group(evaluated.messages, settings.alerts.group), now)
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
              keys: Mapping[str, ApiKey], silences: Sequence[Silence]) -> _Evaluated:
    """Step every alert of the account, then decide which messages go out: inhibition needs
    to know every rule that fires this tick."""
    steps: list[_Step] = []
    for rule in deps.settings.rules_for(facts.account):
        try:
            if isinstance(rule, KeyRuleBase):
                steps += _step_keys(deps, rule, facts, states, keys)
            else:
                prev = states.get((rule.name, "")) or AlertState(rule.name, account=facts.account)
                steps.append(_step_one(deps, rule, _with(facts, prev), prev))
        except Exception as err:  # noqa: BLE001 - one broken rule must not stop the others
            log.error("rule %s failed and was skipped: %s", rule.name, deps.redact(repr(err)))
    out = _Evaluated([], [], dict(states))
    firing = {s.rule.name for s in steps if s.state.firing}
    for s in steps:
        _decide(deps, s, facts, shown, silences, firing, out)
    return out


def _with(facts: Facts, prev: AlertState, key: ApiKey | None = None) -> Facts:
    return Facts(facts.now, facts.latest, facts.history, facts.streak, prev.firing, facts.account, key,
                 facts.keys_known)


def _step_keys(deps: Deps, rule: KeyRuleBase, facts: Facts, states: Mapping[tuple[str, str], AlertState],
               keys: Mapping[str, ApiKey]) -> list[_Step]:
    """One lifecycle per key the rule watches, and for every key it has an alert for (a key
    that went away or was disabled resolves its alert)."""
    steps = []
    known = {key for (name, key) in states if name == rule.name}
    for key in keys.values() if facts.keys_known else ():
        if not rule.watches(key):
            continue
        prev = states.get((rule.name, key.id))
        if prev is None:
            if not rule.holds(key):
                continue  # quiet and never alerted: nothing to step, nothing to store
            prev = AlertState(rule.name, account=facts.account, key=key.id, key_name=key.shown)
        steps.append(_step_one(deps, rule, _with(facts, prev, key), prev, key))
        known.discard(key.id)
    for key_id in sorted(known):  # alerted keys not among this tick's watched ones
        prev = states[(rule.name, key_id)]
        still = keys.get(key_id) if facts.keys_known else None
        judged = still if still is not None and rule.watches(still) else None
        steps.append(_step_one(deps, rule, _with(facts, prev, judged), prev, judged))
    return steps


def _policy(deps: Deps, rule: Rule) -> Policy:
    alerts = deps.settings.alerts
    return Policy(rule.pending_for, alerts.repeat_interval, alerts.send_resolved)


def _step_one(deps: Deps, rule: Rule, facts: Facts, prev: AlertState, key: ApiKey | None = None) -> _Step:
    evaluation = evaluate(rule, facts)
    state, reason = step(prev, evaluation, facts.now, _policy(deps, rule))
    return _Step(rule, state, reason, evaluation, key)


def _decide(deps: Deps, s: _Step, facts: Facts, shown: Figures, silences: Sequence[Silence],
            firing: set[str], out: _Evaluated) -> None:
    """Whether the step's message goes out (silences, inhibition), and the state to store."""
    held = held_back(s.rule, facts.account, silences, firing, facts.now)
    state, reason, send = route(s.state, s.reason, held, notifies(s.reason, _policy(deps, s.rule)),
                                facts.now)
    out.states[(s.rule.name, state.key)] = state
    if s.reason is not Reason.NONE or reason is not Reason.NONE:
        out.transitions.append(Transition(s.rule.name, reason, facts.account, state.key_name))
    if send:
        notes = _guard(deps, s.rule, s.key, facts.account) if reason is Reason.FIRST else ()
        out.messages += _messages(deps, s.rule, state, reason, shown, facts.now, s.evaluation, notes)
    elif held is not None and reason is not Reason.NONE:
        log.info("%s%s: message held back, %s", f"{facts.account}/" if deps.settings.several_accounts
                 else "", s.rule.name, held)


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


def _messages(deps: Deps, rule: Rule, state: AlertState, reason: Reason, shown: Figures, now: datetime,
              evaluation: Evaluation, notes: Sequence[str]) -> Sequence[Message]:
    settings = deps.settings
    style = Style(settings.alerts.zone, settings.several_accounts, settings.forecast.window)
    rendered = render(state, reason, rule.severity, shown, now, figure=evaluation.figure, style=style,
                      notes=notes, topic=_topic(rule))
    channels = settings.channels_for(rule)
    if not channels:
        log.warning("%s: %s (no channel is configured, so nobody is notified)", rendered.title, state.summary)
    return [
        Message(rule.name, channel, reason, rule.severity, rendered.title, rendered.body,
                rendered.notify_type, rendered.key, state.account)
        for channel in channels
    ]


def _topic(rule: Rule) -> str:
    if isinstance(rule, KeyRuleBase):
        return "key"
    return "fetch" if rule.type == "fetch_failure" else "balance"


_PERIOD_NAMES = {timedelta(hours=1): "hourly", timedelta(days=1): "daily", timedelta(days=7): "weekly"}


def _digest(deps: Deps, now: datetime) -> None:
    """Queue the digest of the newest complete period, once (the digests table says which
    periods were queued; a period older than the newest queued one is never queued)."""
    settings = deps.settings
    d = settings.digest
    if d.every is None:
        return
    start, end = digest.latest_period(now, d.every, d.at, settings.alerts.zone)
    with deps.sessions() as session:
        newest = store.newest_digest(session)
        if newest is not None and newest >= start:
            return
        periods = [_account_period(deps, session, a.name, start, end, now) for a in settings.watched]
    title, body = digest.render(periods, start, end, settings.alerts.zone, settings.several_accounts,
                                _PERIOD_NAMES.get(d.every, format_duration(d.every)))
    has_data = any(p.readings for p in periods)
    chart = _digest_chart(deps, periods[0], end, d.every) if has_data and d.attach_chart else None
    key = f"digest#{start:%Y-%m-%dT%H:%MZ}"
    channels = d.channels if d.channels is not None else tuple(c.name for c in settings.channels)
    messages = [Message("digest", channel, Reason.DIGEST, Severity.INFO, title, f"{body}\nref: {key}",
                        "info", key, "", chart) for channel in channels] if has_data else []
    with store.tick_transaction(deps.sessions) as session:
        newest = store.newest_digest(session)
        if newest is not None and newest >= start:
            return  # another process queued it meanwhile
        store.enqueue(session, messages, now)
        store.mark_digest(session, start, now)
    log.info("digest for %s to %s %s", start.strftime("%Y-%m-%dT%H:%MZ"), end.strftime("%Y-%m-%dT%H:%MZ"),
             f"queued for {len(messages)} channel(s)" if messages else "skipped: no readings in the period")


def _account_period(deps: Deps, session: Session, account: str, start: datetime, end: datetime,
                    now: datetime) -> digest.AccountPeriod:
    window = deps.settings.forecast.window
    readings = store.history_between(session, account, start, end)
    latest = store.latest_reading(session, account)
    shown = figures(latest, store.forecast_history(session, account, now - window, now), now, window)
    keys = list(store.load_keys(session, account).values())
    fired = store.fired_between(session, account, start, end, deps.settings.several_accounts)
    return digest.AccountPeriod(account, readings, shown, fired, keys)


def _digest_chart(deps: Deps, period: digest.AccountPeriod, end: datetime, span: timedelta) -> bytes | None:
    """The period's balance and spend chart as PNG, drawn in a child process (matplotlib never
    enters the service); None, with a warning, if that fails."""
    try:
        data = build_chart(period.readings, end, span, period.account if deps.settings.several_accounts
                           else None)
        return render_in_child(data, "png")
    except Exception as err:  # noqa: BLE001 - a digest without its chart beats no digest
        log.warning("the digest goes without its chart: %s", deps.redact(str(err)))
        return None


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
