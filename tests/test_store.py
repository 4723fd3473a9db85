"""worker.store on a migrated database, SQLite and PostgreSQL alike.

Every query the service makes lives in store.py; these tests pin what each one
promises (streak arithmetic, inclusive windows, UTC round trips, the outbox's
claim protocol) and that the two hot reads are served by an index.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session, sessionmaker

from worker import db, store
from worker.domain import (
    AlertState,
    FetchKind,
    FetchOutcome,
    Message,
    Reading,
    Reason,
    Severity,
    Status,
)
from worker.sendpolicy import Decision, Head, OutboxStatus, Outgoing, Policy, decide
from worker.tables import FetchAttemptRow, OutboxRow, ReadingRow

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)
ME = "thishost:1:1"
A = "default"  # the account of every row here

OK = FetchOutcome(FetchKind.OK, total_credits=100.0, total_usage=1.0)
TRANSIENT = FetchOutcome(FetchKind.TRANSIENT, message="timed out after 10s")
AUTH = FetchOutcome(FetchKind.AUTH, message="HTTP 401: refused the key")
BAD = FetchOutcome(FetchKind.BAD_RESPONSE, message="the body is not valid JSON")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = db.make_engine(db_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return store.sessions(engine)


def _message(rule: str = "low-balance", channel: str = "chat", key: str | None = None) -> Message:
    return Message(rule=rule, channel=channel, reason=Reason.FIRST, severity=Severity.WARNING,
                   title=f"creditwatch: {rule} firing", body="remaining $9.00",
                   notify_type="warning", key=key or f"{rule}:1:first")


def _enqueue(factory: sessionmaker[Session], *messages: Message, now: datetime = T0) -> None:
    with factory.begin() as s:
        store.enqueue(s, messages, now)


# --------------------------------------------------------------------------- fetch streaks


def _record(factory: sessionmaker[Session], outcomes: list[FetchOutcome]) -> list[tuple[int, bool]]:
    streaks = []
    for i, outcome in enumerate(outcomes):
        with factory.begin() as s:
            streak = store.record_fetch(s, A, T0 + timedelta(minutes=i), outcome)
        streaks.append((streak.failures, streak.auth))
    return streaks


def test_failures_count_up_and_an_ok_fetch_resets_the_streak(factory: sessionmaker[Session]) -> None:
    got = _record(factory, [TRANSIENT, BAD, TRANSIENT, OK, TRANSIENT, OK, OK])

    assert got == [(1, False), (2, False), (3, False), (0, False), (1, False), (0, False),
                   (0, False)]


def test_auth_sticks_for_the_rest_of_its_streak_and_ends_with_it(
        factory: sessionmaker[Session]) -> None:
    got = _record(factory, [TRANSIENT, AUTH, TRANSIENT, BAD, OK, TRANSIENT])

    assert got == [(1, False), (2, True), (3, True), (4, True), (0, False), (1, False)]


def test_first_fetch_ever_failing_starts_at_one(factory: sessionmaker[Session]) -> None:
    assert _record(factory, [AUTH]) == [(1, True)]


def test_record_fetch_stores_attempts_and_readings_only_for_ok(
        factory: sessionmaker[Session]) -> None:
    _record(factory, [OK, TRANSIENT, AUTH])

    with factory() as s:
        attempts = s.query(FetchAttemptRow).order_by(FetchAttemptRow.id).all()
        readings = s.query(ReadingRow).all()
        last = store.last_fetch(s, A)
        latest = store.latest_reading(s, A)

    assert [a.kind for a in attempts] == ["ok", "transient", "auth"]
    assert attempts[0].message is None  # an ok fetch has nothing to say
    assert attempts[2].message == AUTH.message
    assert last is not None and last.kind == "auth" and last.at == T0 + timedelta(minutes=2)
    assert len(readings) == 1
    assert latest == Reading(T0, 100.0, 1.0)


def test_old_attempts_are_pruned_oldest_first_up_to_the_first_recent_one(
        factory: sessionmaker[Session]) -> None:
    # Stamps in storage order: two old, one stamped in the future (a clock stepped forward,
    # then back), one more old, then the newest. Retention walks the primary key: it takes the
    # two old ones, stops at the future one, and never takes the newest.
    stamps = [T0, T0 + timedelta(minutes=1), T0 + timedelta(days=3), T0 + timedelta(minutes=2),
              T0 + timedelta(minutes=3)]
    with factory.begin() as s:
        for at in stamps:
            store.record_fetch(s, A, at, TRANSIENT)
    cutoff = T0 + timedelta(days=1)

    with factory.begin() as s:
        assert store.delete_attempts_before(s, cutoff, batch=1) == 1  # the batch bounds it
    with factory.begin() as s:
        assert store.delete_attempts_before(s, cutoff, batch=500) == 1
    with factory.begin() as s:
        assert store.delete_attempts_before(s, cutoff, batch=500) == 0
        left = [a.at for a in s.query(FetchAttemptRow).order_by(FetchAttemptRow.id)]
    assert left == stamps[2:]
    with factory.begin() as s:  # once the future stamp is old too, the rest goes but the newest
        assert store.delete_attempts_before(s, T0 + timedelta(days=4), batch=500) == 2
        left = [a.at for a in s.query(FetchAttemptRow).order_by(FetchAttemptRow.id)]
    assert left == stamps[4:]


def test_a_long_error_message_is_cut_to_the_column(factory: sessionmaker[Session]) -> None:
    long = FetchOutcome(FetchKind.TRANSIENT, message="x" * 2000)
    _record(factory, [long])

    with factory() as s:
        last = store.last_fetch(s, A)
    assert last is not None and last.message == "x" * 500


# --------------------------------------------------------------------------- readings


def _add_readings(factory: sessionmaker[Session], times: list[datetime]) -> None:
    with factory.begin() as s:
        for i, at in enumerate(times):
            store.record_fetch(s, A, at, FetchOutcome(FetchKind.OK, total_credits=100.0,
                                                   total_usage=float(i)))


def test_readings_between_is_inclusive_at_both_ends(factory: sessionmaker[Session]) -> None:
    minutes = [0, 5, 10, 15, 20]
    _add_readings(factory, [T0 + timedelta(minutes=m) for m in minutes])

    with factory() as s:
        inside = store.readings_between(s, A, T0 + timedelta(minutes=5), T0 + timedelta(minutes=15))
        just_outside = store.readings_between(s, A, T0 + timedelta(minutes=5, microseconds=1),
                                              T0 + timedelta(minutes=15, microseconds=-1))
        none = store.readings_between(s, A, T0 + timedelta(minutes=21), T0 + timedelta(hours=1))

    assert [r.fetched_at for r in inside] == [T0 + timedelta(minutes=m) for m in (5, 10, 15)]
    assert [r.fetched_at for r in just_outside] == [T0 + timedelta(minutes=10)]
    assert none == []


def test_readings_between_keeps_the_stored_order_inside_a_time_window(
        factory: sessionmaker[Session]) -> None:
    # Stored out of order (a clock step back, a replica that lagged): the window is by
    # time, the order is the order of storage, so the forecast can tell a step back.
    times = [T0 + timedelta(minutes=m) for m in (30, 10, 20, 0, 40, 90)]
    _add_readings(factory, times)

    with factory() as s:
        got = store.readings_between(s, A, T0, T0 + timedelta(hours=1))

    assert [r.fetched_at for r in got] == times[:5]
    # the usage values travel with their timestamps
    by_time = {t: float(i) for i, t in enumerate(times)}
    assert [r.total_usage for r in got] == [by_time[r.fetched_at] for r in got]


def test_readings_with_equal_timestamps_come_in_insert_order(
        factory: sessionmaker[Session]) -> None:
    _add_readings(factory, [T0, T0, T0])

    with factory() as s:
        got = store.readings_between(s, A, T0, T0)

    assert [r.total_usage for r in got] == [0.0, 1.0, 2.0]


def test_window_bounds_in_another_zone_mean_the_same_instants(
        factory: sessionmaker[Session]) -> None:
    _add_readings(factory, [T0 + timedelta(minutes=m) for m in (0, 30, 60)])
    plus_two = timezone(timedelta(hours=2))

    with factory() as s:
        got = store.readings_between(s, A, (T0 + timedelta(minutes=30)).astimezone(plus_two),
                                     (T0 + timedelta(minutes=60)).astimezone(plus_two))

    assert [r.fetched_at for r in got] == [T0 + timedelta(minutes=30), T0 + timedelta(minutes=60)]


# --------------------------------------------------------------------------- UTC round trip


def test_aware_datetimes_come_back_aware_in_utc(factory: sessionmaker[Session]) -> None:
    minus_five = timezone(timedelta(hours=-5))
    local = datetime(2026, 11, 25, 5, 30, 15, 123456, tzinfo=minus_five)  # 10:30:15.123456Z
    with factory.begin() as s:
        store.record_fetch(s, A, local, OK)

    with factory() as s:
        [reading] = store.readings_between(s, A, T0, T0 + timedelta(hours=1))
        last = store.last_fetch(s, A)

    expected = datetime(2026, 11, 25, 10, 30, 15, 123456, tzinfo=UTC)
    assert reading.fetched_at == expected
    assert reading.fetched_at.utcoffset() == timedelta(0)
    assert reading.fetched_at.tzinfo is not None
    assert last is not None and last.at == expected and last.at.utcoffset() == timedelta(0)


def test_a_naive_datetime_is_refused(factory: sessionmaker[Session]) -> None:
    with pytest.raises((ValueError, StatementError), match="naive datetime"), factory.begin() as s:
        store.record_fetch(s, A, datetime(2026, 11, 25, 10, 0), OK)
        s.flush()

    with factory() as s:
        assert store.latest_reading(s, A) is None
        assert store.last_fetch(s, A) is None


def test_a_naive_window_bound_is_refused(factory: sessionmaker[Session]) -> None:
    with factory() as s, pytest.raises((ValueError, StatementError), match="naive datetime"):
        store.readings_between(s, A, datetime(2026, 11, 25), T0)


# --------------------------------------------------------------------------- alert states


def test_only_stored_states_load(factory: sessionmaker[Session]) -> None:
    """An alert never stored is inactive: the tick starts it from AlertState(rule)."""
    with factory() as s:
        assert store.load_states(s, A) == {}


def test_save_then_load_round_trips_and_updates_in_place(factory: sessionmaker[Session]) -> None:
    firing = AlertState(rule="low-balance", status=Status.FIRING, pending_since=T0,
                        firing_since=T0 + timedelta(minutes=10),
                        last_sent_at=T0 + timedelta(minutes=10), period=3, repeats=1,
                        summary="remaining $9.00 is below $10.00")
    with factory.begin() as s:
        store.save_state(s, firing, Severity.CRITICAL, T0 + timedelta(minutes=10))

    with factory() as s:
        loaded = store.load_states(s, A)
    assert loaded == {("low-balance", ""): firing}
    since = loaded[("low-balance", "")].firing_since
    assert since == T0 + timedelta(minutes=10) and since.utcoffset() == timedelta(0)

    resolved = AlertState(rule="low-balance", status=Status.INACTIVE, period=3)
    with factory.begin() as s:
        store.save_state(s, resolved, Severity.CRITICAL, T0 + timedelta(minutes=20))

    with factory() as s:
        assert store.load_states(s, A) == {("low-balance", ""): resolved}
        assert s.execute(text("SELECT count(*) FROM alert_states")).scalar() == 1


# --------------------------------------------------------------------------- outbox


def _head(factory: sessionmaker[Session], channel: str = "chat") -> Head:
    with factory() as s:
        head = store.head(s, channel)
    assert head is not None
    return head


def _claim(factory: sessionmaker[Session], at: datetime, me: str = ME) -> Outgoing | None:
    head = _head(factory)
    with factory.begin() as s:
        return store.claim(s, head, at, LEASE, me)


def test_the_head_is_the_oldest_undelivered_row_per_channel(factory: sessionmaker[Session]) -> None:
    with factory.begin() as s:
        store.enqueue(s, [_message("r1"), _message("r2", channel="mail"), _message("r3")], T0)
    with factory.begin() as s:
        store.enqueue(s, [_message("r4")], T0 + timedelta(minutes=1))

    with factory() as s:
        assert store.channels_waiting(s) == {"chat", "mail"}
        assert store.undelivered_count(s) == 4
        backlog = store.backlog(s)
    chat = _head(factory)
    assert chat.key == "r1:1:first" and chat.status is OutboxStatus.PENDING and chat.attempts == 0
    assert _head(factory, "mail").key == "r2:1:first"
    assert [(b.channel, b.waiting, b.head.key) for b in backlog] == [
        ("chat", 3, "r1:1:first"), ("mail", 1, "r2:1:first")]

    # Only when the head is delivered does the next one come up: order per channel.
    sent = _claim(factory, T0)
    assert sent is not None and sent.key == "r1:1:first"
    assert _head(factory).key == "r1:1:first"  # in flight, still the head
    with factory.begin() as s:
        store.mark_delivered(s, sent.id, T0)
    assert _head(factory).key == "r3:1:first"


def test_claim_takes_a_row_once(factory: sessionmaker[Session]) -> None:
    _enqueue(factory, _message())
    seen = _head(factory)

    with factory.begin() as s:
        row = store.claim(s, seen, T0, LEASE, ME)
        assert row is not None
        assert (row.id, row.attempt, row.key) == (seen.id, 1, seen.key)
    # The same stale view cannot claim it twice.
    with factory.begin() as s:
        assert store.claim(s, seen, T0 + timedelta(seconds=1), LEASE, ME) is None
    now = _head(factory)
    assert (now.status, now.attempts, now.claimed_by, now.claimed_until) == (
        OutboxStatus.SENDING, 1, ME, T0 + LEASE)


def test_two_sessions_racing_for_one_row_only_one_wins(factory: sessionmaker[Session]) -> None:
    # Both replicas saw the row as the head; the second claims while the first's claim is
    # still uncommitted. It must wait and then find nothing to claim, not claim it twice.
    _enqueue(factory, _message())
    seen = _head(factory)
    second: list[object] = []

    def claim_in_another_session() -> None:
        with factory.begin() as s:
            second.append(store.claim(s, seen, T0, LEASE, "other:1:1"))

    with factory.begin() as first:
        assert store.claim(first, seen, T0, LEASE, ME) is not None
        racer = threading.Thread(target=claim_in_another_session)
        racer.start()
        time.sleep(0.3)
    racer.join(10)

    assert not racer.is_alive()
    assert second == [None]
    with factory() as s:
        row = s.get(OutboxRow, seen.id)
        assert row is not None and row.attempts == 1 and row.claimed_by == ME


def test_delivered_rows_are_never_claimable_again(factory: sessionmaker[Session]) -> None:
    _enqueue(factory, _message())
    seen = _head(factory)
    sent = _claim(factory, T0)
    assert sent is not None
    with factory.begin() as s:
        store.mark_delivered(s, sent.id, T0 + timedelta(seconds=2))

    much_later = T0 + timedelta(days=30)
    with factory.begin() as s:
        assert store.head(s, "chat") is None
        assert store.claim(s, seen, much_later, LEASE, ME) is None
        row = s.get(OutboxRow, sent.id)
        assert row is not None
        assert (row.status, row.claimed_until, row.attempts) == ("delivered", None, 1)
        assert row.delivered_at == T0 + timedelta(seconds=2)
        assert store.undelivered_count(s) == 0


def test_a_failed_row_backs_off_and_keeps_its_place(factory: sessionmaker[Session]) -> None:
    _enqueue(factory, _message("first"))
    _enqueue(factory, _message("second"))
    sent = _claim(factory, T0)
    assert sent is not None
    retry_at = T0 + timedelta(minutes=1)
    with factory.begin() as s:
        store.mark_failed(s, sent.id, ME, "HTTP 500 " + "y" * 1000, retry_at)

    head = _head(factory)
    assert head.key == "first:1:first" and head.status is OutboxStatus.FAILED
    assert head.next_try_at == retry_at and head.claimed_by is None
    assert head.last_error is not None and len(head.last_error) == 500
    policy = Policy(interval=timedelta(minutes=1), give_up_after=timedelta(hours=24))
    assert decide(head, retry_at - timedelta(seconds=1), policy, claimer_gone=True) is Decision.BACKOFF
    assert decide(head, retry_at, policy, claimer_gone=True) is Decision.SEND
    again = _claim(factory, retry_at)
    assert again is not None and again.attempt == 2 and again.id == sent.id
    with factory.begin() as s:
        store.mark_delivered(s, again.id, retry_at)
    assert _head(factory).key == "second:1:first"


def test_mark_failed_does_not_resurrect_a_delivered_row(factory: sessionmaker[Session]) -> None:
    # A late failure report (say, from a timed-out attempt) must not undo a delivery.
    _enqueue(factory, _message())
    sent = _claim(factory, T0)
    assert sent is not None
    with factory.begin() as s:
        store.mark_delivered(s, sent.id, T0)
        store.mark_failed(s, sent.id, ME, "late failure", T0)
    with factory() as s:
        assert store.head(s, "chat") is None


def test_an_expired_sending_lease_becomes_claimable(factory: sessionmaker[Session]) -> None:
    _enqueue(factory, _message())
    assert _claim(factory, T0, me="elsewhere:4242:1") is not None  # then that host went away
    policy = Policy(interval=timedelta(minutes=1), give_up_after=timedelta(hours=24))

    held = _head(factory)
    assert decide(held, T0 + LEASE - timedelta(seconds=1), policy, False) is Decision.IN_FLIGHT
    after = T0 + LEASE + timedelta(seconds=1)
    assert decide(held, after, policy, False) is Decision.SEND
    row = _claim(factory, after)
    assert row is not None and row.attempt == 2
    assert _head(factory).claimed_until == after + LEASE


def test_give_up_drops_the_head_and_the_next_one_comes_up(factory: sessionmaker[Session]) -> None:
    _enqueue(factory, _message("old"))
    _enqueue(factory, _message("new"), now=T0 + timedelta(hours=2))
    head = _head(factory)
    with factory.begin() as s:
        assert store.drop(s, head, T0 + timedelta(days=1))
    with factory.begin() as s:
        assert not store.drop(s, head, T0 + timedelta(days=1))  # already gone
        row = s.get(OutboxRow, head.id)
        assert row is not None and row.status == "dropped" and row.dropped_at == T0 + timedelta(days=1)
    assert _head(factory).key == "new:1:first"


def test_messages_of_removed_channels_are_dropped(factory: sessionmaker[Session]) -> None:
    _enqueue(factory, _message("a"), _message("b"))
    _enqueue(factory, _message("c", channel="gone"))
    with factory.begin() as s:
        dropped = store.drop_channels_except(s, ["chat"], T0)
    assert dropped == [("gone", "c:1:first")]
    with factory() as s:
        assert store.channels_waiting(s) == {"chat"}


def test_the_same_key_and_channel_is_stored_once(factory: sessionmaker[Session]) -> None:
    from sqlalchemy.exc import IntegrityError

    _enqueue(factory, _message(key="k"))
    with pytest.raises(IntegrityError), factory.begin() as s:
        store.enqueue(s, [_message(key="k")], T0)
    # the same key for another channel is another row
    _enqueue(factory, _message(key="k", channel="mail"))
    with factory() as s:
        assert store.undelivered_count(s) == 2


# --------------------------------------------------------------------------- query plans


def _capture_selects(engine: Engine) -> tuple[list[tuple[str, Any]], Any]:
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
             executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    return seen, grab


def _store_queries(engine: Engine, factory: sessionmaker[Session]) -> dict[str, tuple[str, Any]]:
    """The exact SQL and parameters store.py sends for the two hot reads."""
    seen, grab = _capture_selects(engine)
    try:
        with factory() as s:
            store.readings_between(s, A, T0 + timedelta(hours=10), T0 + timedelta(hours=11))
        window = [q for q in seen if "FROM readings" in q[0]]
        seen.clear()
        with factory() as s:
            store.last_fetch(s, A)
        latest = [q for q in seen if "FROM fetch_attempts" in q[0]]
    finally:
        event.remove(engine, "before_cursor_execute", grab)
    assert len(window) == 1 and len(latest) == 1, (window, latest)
    return {"window": window[0], "latest": latest[0]}


def _fill(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(insert(ReadingRow), [
            {"fetched_at": T0 + timedelta(minutes=i), "total_credits": 100.0,
             "total_usage": i / 100} for i in range(n)])
        conn.execute(insert(FetchAttemptRow), [
            {"at": T0 + timedelta(minutes=i), "kind": "ok", "message": None, "streak": 0,
             "streak_auth": False} for i in range(n)])


def test_hot_reads_use_an_index_on_sqlite(sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    _fill(engine, 2000)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    queries = _store_queries(engine, store.sessions(engine))

    plans = {}
    with engine.connect() as conn:
        for name, (sql, params) in queries.items():
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).all()
            plans[name] = "\n".join(str(r[-1]) for r in rows)
    engine.dispose()

    window = plans["window"]
    assert "USING INDEX ix_readings_fetched_at" in window or "USING COVERING INDEX" in window, window
    assert "SCAN readings" not in window, window
    latest = plans["latest"]
    # ORDER BY id DESC LIMIT 1 on the rowid: either a SEARCH on the primary key or a
    # rowid-ordered scan that stops after one row; never a sort of the whole table.
    assert ("USING INTEGER PRIMARY KEY" in latest or "USING INDEX" in latest
            or latest.strip() == "SCAN fetch_attempts"), latest
    assert "TEMP B-TREE" not in latest, latest


def test_hot_reads_use_an_index_on_postgresql(pg_url: str) -> None:
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    _fill(engine, 5000)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE readings")
        conn.exec_driver_sql("ANALYZE fetch_attempts")
    queries = _store_queries(engine, store.sessions(engine))

    plans = {}
    with engine.connect() as conn:
        for name, (sql, params) in queries.items():
            rows = conn.exec_driver_sql(f"EXPLAIN {sql}", params).all()
            plans[name] = "\n".join(r[0] for r in rows)
    engine.dispose()

    window = plans["window"]
    assert "Index" in window and "ix_readings_fetched_at" in window, window
    assert "Seq Scan" not in window, window
    latest = plans["latest"]
    assert "Index Scan Backward using pk_fetch_attempts" in latest, latest
    assert "Seq Scan" not in latest and "Sort" not in latest, latest
