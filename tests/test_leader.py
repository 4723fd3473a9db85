"""The leader lease: its pure decisions (worker.lease), its queries and the fence on a leader's
writes (worker.store.lease), and the election in process (worker.leader), on SQLite and
PostgreSQL alike. The replicas themselves, killed, frozen and skewed, are in
test_failover.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from worker import db, store
from worker.domain import FetchKind, FetchOutcome
from worker.leader import Leader
from worker.lease import (
    Action,
    Lease,
    LostLease,
    Why,
    acting,
    failover_bound,
    holder_parts,
    leadership,
    plan,
    released,
    terms_for,
)
from worker.reports import status_json, status_text
from worker.store.lease import holds
from worker.tables import LeaseRow, ReadingRow

FAST = settings(max_examples=300, deadline=None)
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
S = timedelta(seconds=1)
ME, OTHER = "hosta:100:7", "hostb:200:9"  # hosts that are not this one: never judged gone
TERMS = terms_for(timedelta(seconds=1))
OK = FetchOutcome(FetchKind.OK, total_credits=100.0, total_usage=1.0)


# --------------------------------------------------------------------------- pure decisions


def test_a_lease_never_taken_is_taken_with_epoch_1() -> None:
    decided = plan(Lease(), ME, T0, TERMS, holder_gone=False)
    assert (decided.action, decided.why) == (Action.TAKE, Why.FREE)
    assert decided.lease == Lease(ME, 1, T0, T0 + TERMS.duration)


def test_our_own_lease_is_renewed_under_the_same_epoch_even_after_it_expired() -> None:
    mine = Lease(ME, 4, T0, T0 + TERMS.duration)
    for now in (T0 + S, T0 + 3 * TERMS.duration):
        decided = plan(mine, ME, now, TERMS, holder_gone=False)
        assert (decided.action, decided.lease) == (Action.KEEP, Lease(ME, 4, T0, now + TERMS.duration))


def test_another_replicas_live_lease_is_left_alone() -> None:
    theirs = Lease(OTHER, 4, T0, T0 + TERMS.duration)
    decided = plan(theirs, ME, T0 + TERMS.duration - S, TERMS, holder_gone=False)
    assert (decided.action, decided.why, decided.lease) == (Action.WAIT, Why.HELD, theirs)


@pytest.mark.parametrize(("offset", "gone", "why"), [
    (TERMS.duration, False, Why.EXPIRED),  # the expiry instant itself is expired
    (TERMS.duration + S, False, Why.EXPIRED),
    (S, True, Why.HOLDER_GONE),  # a dead process of this host: at once
])
def test_an_expired_lease_or_one_whose_holder_is_gone_is_taken_with_the_next_epoch(
        offset: timedelta, gone: bool, why: Why) -> None:
    now = T0 + offset
    decided = plan(Lease(OTHER, 4, T0, T0 + TERMS.duration), ME, now, TERMS, holder_gone=gone)
    assert (decided.action, decided.why) == (Action.TAKE, why)
    assert decided.lease == Lease(ME, 5, now, now + TERMS.duration)


def test_a_released_lease_keeps_its_holder_for_status_and_is_free_at_once() -> None:
    mine = Lease(ME, 4, T0, T0 + TERMS.duration)
    given_up = released(mine, T0 + S)
    assert given_up == Lease(ME, 4, T0, T0 + S)
    assert plan(given_up, OTHER, T0 + S, TERMS, holder_gone=False).action is Action.TAKE


leases = st.builds(Lease, st.sampled_from([None, ME, OTHER]), st.integers(0, 10**6),
                   st.none() | st.just(T0), st.none() | st.integers(-100, 100).map(lambda s: T0 + s * S))


@FAST
@given(current=leases, me=st.sampled_from([ME, OTHER]), seconds=st.integers(-100, 100), gone=st.booleans())
def test_the_epoch_only_grows_and_a_written_lease_is_always_ours_and_in_the_future(
        current: Lease, me: str, seconds: int, gone: bool) -> None:
    now = T0 + seconds * S
    decided = plan(current, me, now, TERMS, gone)
    if decided.action is Action.WAIT:
        assert decided.lease == current and current.holder not in (None, me)
        assert not gone and current.expires_at is not None and current.expires_at > now
        return
    assert decided.lease.holder == me and decided.lease.expires_at == now + TERMS.duration
    assert decided.lease.epoch == current.epoch + (decided.action is Action.TAKE)
    assert (decided.action is Action.KEEP) == (current.holder == me)


@FAST
@given(interval=st.integers(1, 86_400).map(lambda s: s * S))
def test_the_lease_terms_keep_the_failover_bound_with_a_tick_to_spare(interval: timedelta) -> None:
    terms = terms_for(interval)
    # Replaced at most a lease after the last renewal plus one standby interval, and the new
    # leader's first tick still fits: at least max(interval, 5 s) to spare.
    spare = failover_bound(interval) - (terms.duration + interval)
    assert spare >= max(interval, 5 * S)
    assert timedelta(0) < terms.renew_every < terms.acting_for < terms.duration


@FAST
@given(interval=st.integers(1, 3600).map(lambda s: s * S), died=st.floats(0, 1), phase=st.floats(0, 1))
def test_a_standby_ticking_on_schedule_takes_over_within_the_bound(
        interval: timedelta, died: float, phase: float) -> None:
    """The leader renewed last at T0 and died (or froze) before its next renewal; a standby
    tries at its own tick times, whatever their phase."""
    terms = terms_for(interval)
    lease = Lease(OTHER, 3, T0, T0 + terms.duration)
    death = T0 + died * terms.renew_every
    attempt = death + phase * interval
    while plan(lease, ME, attempt, terms, holder_gone=False).action is Action.WAIT:
        attempt += interval
    assert attempt - death <= failover_bound(interval) - max(interval, 5 * S)


def test_a_leader_acts_for_less_than_its_lease_after_its_last_renewal() -> None:
    acting_for = TERMS.acting_for.total_seconds()
    assert acting(100.0, 100.0 + acting_for - 0.01, TERMS)
    assert not acting(100.0, 100.0 + acting_for, TERMS)
    assert not acting(None, 100.0, TERMS)
    assert TERMS.acting_for < TERMS.duration


def test_status_names_the_leader_by_host_and_pid() -> None:
    assert holder_parts("web-1:4242:98765") == ("web-1", 4242)
    assert holder_parts(None) is None and holder_parts("garbage") is None
    assert leadership(Lease(), T0) is None
    shown = leadership(Lease("web-1:4242:98765", 3, T0, T0 + TERMS.duration), T0 + S)
    assert shown is not None
    assert (shown.host, shown.pid, shown.epoch, shown.expired) == ("web-1", 4242, 3, False)
    expired = leadership(Lease("web-1:4242:98765", 3, T0, T0 + S), T0 + S)
    assert expired is not None and expired.expired


def test_status_text_and_json_carry_the_leader() -> None:
    from worker.domain import Figures
    from worker.snapshot import take

    snap = take(T0, Figures(None, None, None), timedelta(hours=6), None, [], {}, {})
    shown = leadership(Lease("web-1:4242:98765", 3, T0, T0 + TERMS.duration), T0 + S)
    doc = json.loads(status_json([snap], shown))
    assert doc["leader"]["pid"] == 4242 and doc["leader"]["host"] == "web-1"
    assert doc["leader"]["epoch"] == 3 and doc["leader"]["since"] == "2026-11-25T10:00:00Z"
    assert json.loads(status_json([snap]))["leader"] is None
    assert "leader      web-1 pid 4242, epoch 3, since 2026-11-25T10:00:00Z" in status_text([snap], shown)
    assert "leader" not in status_text([snap])


# --------------------------------------------------------------------------- the store and the fence


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = db.make_engine(db_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


def _lease(engine: Engine) -> Lease:
    with store.sessions(engine)() as session:
        return store.read_lease(session)[0]


def _set_lease(engine: Engine, new: Lease) -> None:
    with store.sessions(engine).begin() as session:
        current, _ = store.read_lease(session)
        assert store.write_lease(session, current, new)


def _readings(engine: Engine) -> int:
    with store.sessions(engine)() as session:
        return int(session.scalar(select(func.count()).select_from(ReadingRow)) or 0)


def _write_reading(sessions: sessionmaker[Session], at: datetime = T0) -> None:
    with store.tick_transaction(sessions) as session:
        store.record_fetch(session, "default", at, OK)


def test_the_migration_leaves_one_lease_never_taken(engine: Engine) -> None:
    with store.sessions(engine)() as session:
        assert session.scalar(select(func.count()).select_from(LeaseRow)) == 1
    assert _lease(engine) == Lease()


def test_the_database_clock_comes_back_aware_utc_and_close_to_ours(engine: Engine) -> None:
    with store.sessions(engine)() as session:
        _, now = store.read_lease(session)
        alone = store.database_now(session)
    for moment in (now, alone):
        assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)
        assert abs((moment - datetime.now(UTC)).total_seconds()) < 5  # one machine here


def test_two_replicas_racing_for_the_lease_one_wins(engine: Engine) -> None:
    """Both read the free lease, both plan to take epoch 1: the conditional UPDATE lets one."""
    factory = store.sessions(engine)
    seen = []
    for _ in range(2):
        with factory() as session:
            seen.append(store.read_lease(session))
    wins = []
    for (lease, now), me in zip(seen, (ME, OTHER), strict=True):
        with factory.begin() as session:
            wins.append(store.write_lease(session, lease, plan(lease, me, now, TERMS, False).lease))
    assert wins == [True, False]
    assert _lease(engine).holder == ME and _lease(engine).epoch == 1


def test_a_stale_epoch_writes_nothing_and_reads_still_work(engine: Engine) -> None:
    fence = store.Fence()
    sessions = store.fenced(engine, fence)
    _set_lease(engine, Lease(ME, 1, T0, T0 + TERMS.duration))
    fence.hold(1, ME)
    _write_reading(sessions)  # ours: committed
    assert _readings(engine) == 1
    _set_lease(engine, Lease(OTHER, 2, T0, T0 + TERMS.duration))  # another replica took over
    with pytest.raises(LostLease, match="epoch 1"):
        _write_reading(sessions, T0 + S)
    with pytest.raises(LostLease), sessions.begin() as session:  # claims and records go through them too
        session.add(ReadingRow(account="default", fetched_at=T0, total_credits=1.0, total_usage=1.0))
    assert _readings(engine) == 1  # rolled back, both
    with sessions() as session:  # a standby's reads (its status page) are never fenced
        assert store.latest_reading(session, "default") is not None
    with sessions.begin() as session:  # nor a transaction that wrote nothing
        store.last_fetch(session, "default")
    fence.hold(None, ME)  # a standby of `run`: no epoch at all
    with pytest.raises(LostLease, match="no epoch"):
        _write_reading(sessions, T0 + 2 * S)


def test_commands_that_never_lead_write_unfenced(engine: Engine) -> None:
    """`check` and the other commands build the same sessions with a fence never held."""
    _set_lease(engine, Lease(OTHER, 7, T0, T0 + TERMS.duration))
    _write_reading(store.fenced(engine, store.Fence()))
    assert _readings(engine) == 1


def test_on_postgresql_a_take_waits_for_a_fenced_commit_in_flight(pg_url: str) -> None:
    """The fence's check share-locks the lease row until the commit: a take cannot slip in
    between the check and the commit of the leader's writes."""
    engine = db.make_engine(pg_url)
    try:
        db.upgrade(engine)
        _set_lease(engine, Lease(ME, 1, T0, T0))  # expired: another replica may take it
        factory = store.sessions(engine)
        took: list[float] = []

        def take() -> None:
            with factory.begin() as session:
                seen, now = store.read_lease(session)
                assert store.write_lease(session, seen, plan(seen, OTHER, now, TERMS, False).lease)
            took.append(time.monotonic())

        with factory.begin() as leader:
            assert holds(leader, 1, ME)
            taker = threading.Thread(target=take)
            taker.start()
            time.sleep(1.0)
            assert not took, "the take committed between the fence's check and the commit"
            committed = time.monotonic()
        taker.join(10)
        assert took and took[0] >= committed
        assert _lease(engine).epoch == 2
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the election


@pytest.fixture
def gone_token() -> str:
    """A token of this host whose process has exited."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)
    return f"{socket.gethostname()}:{child.stdout.strip()}:1"


def test_one_leader_the_other_stands_by_and_a_clean_stop_hands_over_at_once(engine: Engine) -> None:
    fence_a, fence_b = store.Fence(), store.Fence()
    a = Leader(engine, fence_a, S, me=ME)
    b = Leader(engine, fence_b, S, me=OTHER)
    try:
        first, second = a.step(), b.step()
        assert first.leading and first.took and first.lease.epoch == 1 and a.leading
        assert not second.leading and not b.leading and second.lease.holder == ME
        assert second.line == "standby: hosta pid 100 leads (epoch 1)"
        assert fence_a.terms() == (True, 1, ME) and fence_b.terms() == (True, None, OTHER)
        renewed = a.step()
        assert renewed.leading and not renewed.took and renewed.lease.epoch == 1
        assert renewed.lease.expires_at is not None and first.lease.expires_at is not None
        assert renewed.lease.expires_at > first.lease.expires_at  # by the database's clock
        a.close()
        assert fence_a.terms() == (True, None, ME)
        took = b.step()
        assert took.leading and took.took and took.lease.epoch == 2 and took.lease.holder == OTHER
        assert not a.step().leading
    finally:
        a.close()
        b.close()


def test_a_lease_left_by_a_dead_process_of_this_host_is_taken_at_once(engine: Engine,
                                                                      gone_token: str) -> None:
    _set_lease(engine, Lease(gone_token, 5, T0, datetime.now(UTC) + timedelta(hours=1)))
    leader = Leader(engine, store.Fence(), S, me=ME)
    try:
        assert leader.step().leading and _lease(engine).epoch == 6
    finally:
        leader.close()


def test_a_live_lease_of_another_host_waits_for_its_expiry(engine: Engine) -> None:
    with store.sessions(engine)() as session:
        now = store.database_now(session)
    _set_lease(engine, Lease(OTHER, 5, now, now + timedelta(seconds=2)))
    leader = Leader(engine, store.Fence(), S, me=ME)
    try:
        assert not leader.step().leading
        time.sleep(2.2)
        assert leader.step().leading and _lease(engine).epoch == 6
    finally:
        leader.close()


def test_the_keeper_renews_the_lease_while_no_tick_runs(engine: Engine) -> None:
    leader = Leader(engine, store.Fence(), S, me=ME)
    try:
        first = leader.step().lease.expires_at
        assert first is not None
        leader.start()
        time.sleep(leader.terms.renew_every.total_seconds() + 1.0)
        later = _lease(engine).expires_at
        assert later is not None and later > first
    finally:
        leader.close()


def test_a_leader_that_lost_its_lease_to_another_says_so_and_writes_nothing(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    fence = store.Fence()
    sessions = store.fenced(engine, fence)
    a = Leader(engine, fence, S, me=ME)
    try:
        assert a.step().leading
        lease = _lease(engine)
        _set_lease(engine, replace(lease, holder=OTHER, epoch=lease.epoch + 1))  # taken while a slept
        with pytest.raises(LostLease):
            _write_reading(sessions)
        assert not a.step().leading
        assert any("lost the leader lease (epoch 1) to hostb pid 200 (epoch 2)" in m for m in caplog.messages)
    finally:
        a.close()
