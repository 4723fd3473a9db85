"""The alert lifecycle: inactive -> pending -> firing (FIRST, REPEAT...) -> RESOLVED."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain import AlertState, Condition, Evaluation, Reason, Status
from worker.lifecycle import Policy, notifies, step

FAST = settings(max_examples=200, deadline=None)
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
H = timedelta(hours=1)
T, F, U = Condition.TRUE, Condition.FALSE, Condition.UNKNOWN
FIRST, REPEAT, RESOLVED, NONE = Reason.FIRST, Reason.REPEAT, Reason.RESOLVED, Reason.NONE
INACTIVE, PENDING, FIRING = Status.INACTIVE, Status.PENDING, Status.FIRING


def ev(cond: Condition, summary: str = "why") -> Evaluation:
    return Evaluation(cond, summary)


def run(
    conditions: list[tuple[int, Condition]], policy: Policy, start: AlertState | None = None
) -> list[tuple[Status, Reason]]:
    """Step through [(minutes since T0, condition), ...]; return each (status, reason)."""
    state = start or AlertState("low")
    out = []
    for minute, cond in conditions:
        state, reason = step(state, ev(cond), T0 + minute * M, policy)
        out.append((state.status, reason))
    return out


NO_FOR = Policy(pending_for=timedelta(0), repeat_interval=H)
FOR_10M = Policy(pending_for=10 * M, repeat_interval=H)


@pytest.mark.parametrize(
    ("policy", "ticks", "expected"),
    [
        pytest.param(NO_FOR, [(0, T)], [(FIRING, FIRST)], id="for=0 fires at once"),
        pytest.param(NO_FOR, [(0, F)], [(INACTIVE, NONE)], id="false stays inactive"),
        pytest.param(NO_FOR, [(0, U)], [(INACTIVE, NONE)], id="unknown stays inactive"),
        pytest.param(
            NO_FOR, [(0, T), (5, T), (59, T), (60, T), (65, T), (120, T)],
            [(FIRING, FIRST), (FIRING, NONE), (FIRING, NONE), (FIRING, REPEAT), (FIRING, NONE),
             (FIRING, REPEAT)],
            id="repeat only after repeat_interval",
        ),
        pytest.param(
            NO_FOR, [(0, T), (5, F), (10, F), (15, T)],
            [(FIRING, FIRST), (INACTIVE, RESOLVED), (INACTIVE, NONE), (FIRING, FIRST)],
            id="resolved once, then a new first",
        ),
        pytest.param(
            FOR_10M, [(0, T), (5, T), (9, T), (10, T), (15, T)],
            [(PENDING, NONE), (PENDING, NONE), (PENDING, NONE), (FIRING, FIRST), (FIRING, NONE)],
            id="pending during for, firing after",
        ),
        pytest.param(
            FOR_10M, [(0, T), (5, F), (8, T), (15, T), (18, T)],
            [(PENDING, NONE), (INACTIVE, NONE), (PENDING, NONE), (PENDING, NONE),
             (FIRING, FIRST)],
            id="false during for restarts it, silently",
        ),
        pytest.param(
            FOR_10M, [(0, T), (5, U), (10, T)],
            [(PENDING, NONE), (PENDING, NONE), (FIRING, FIRST)],
            id="unknown during for keeps pending",
        ),
        pytest.param(
            NO_FOR, [(0, T), (30, U), (61, U), (62, T)],
            [(FIRING, FIRST), (FIRING, NONE), (FIRING, NONE), (FIRING, REPEAT)],
            id="unknown keeps firing and sends nothing",
        ),
        pytest.param(
            NO_FOR, [(0, T), (5, U), (10, F)],
            [(FIRING, FIRST), (FIRING, NONE), (INACTIVE, RESOLVED)],
            id="unknown does not resolve",
        ),
        pytest.param(
            NO_FOR, [(0, T), (90, T), (100, T), (150, T), (151, T)],
            [(FIRING, FIRST), (FIRING, REPEAT), (FIRING, NONE), (FIRING, REPEAT),
             (FIRING, NONE)],
            id="repeat counts from the last send, not from the schedule",
        ),
    ],
)
def test_transitions(
    policy: Policy, ticks: list[tuple[int, Condition]], expected: list[tuple[Status, Reason]]
) -> None:
    assert run(ticks, policy) == expected


def test_first_sets_up_a_new_period() -> None:
    prev = AlertState("low", period=4, repeats=7)
    state, reason = step(prev, ev(T, "remaining $5.00"), T0, NO_FOR)
    assert reason is FIRST
    assert state == AlertState("low", FIRING, None, T0, T0, period=5, repeats=0,
                               summary="remaining $5.00")


def test_repeat_counts_and_records_the_send() -> None:
    state, _ = step(AlertState("low"), ev(T), T0, NO_FOR)
    state, reason = step(state, ev(T, "later"), T0 + 2 * H, NO_FOR)
    assert reason is REPEAT
    assert (state.repeats, state.last_sent_at, state.firing_since, state.period) == (
        1, T0 + 2 * H, T0, 1,
    )
    assert state.summary == "later"


def test_resolved_keeps_the_period_and_clears_the_times() -> None:
    state, _ = step(AlertState("low"), ev(T), T0, NO_FOR)
    state, reason = step(state, ev(F, "fine again"), T0 + M, NO_FOR)
    assert reason is RESOLVED
    assert state.status is INACTIVE
    assert (state.firing_since, state.pending_since, state.period) == (None, None, 1)
    assert state.summary == "fine again"


def test_pending_to_inactive_on_false_sends_nothing() -> None:
    state, reason = step(AlertState("low"), ev(T), T0, FOR_10M)
    assert (state.status, state.pending_since, reason) == (PENDING, T0, NONE)
    state, reason = step(state, ev(F), T0 + M, FOR_10M)
    assert (state.status, state.pending_since, reason) == (INACTIVE, None, NONE)
    assert state.period == 0


def test_unknown_returns_the_state_unchanged() -> None:
    for prev in (
        AlertState("low"),
        AlertState("low", PENDING, pending_since=T0),
        AlertState("low", FIRING, firing_since=T0, last_sent_at=T0, period=2, repeats=3),
    ):
        state, reason = step(prev, ev(U, "cannot tell"), T0 + 10 * H, NO_FOR)
        assert (state, reason) == (prev, NONE)


def test_clock_stepped_backwards_causes_no_repeat_storm() -> None:
    state, _ = step(AlertState("low"), ev(T), T0, NO_FOR)
    back = T0 - 60 * M  # the clock is stepped back an hour, then ticks every 5 minutes
    reasons = []
    for minutes in range(0, 60, 5):
        state, reason = step(state, ev(T), back + minutes * M, NO_FOR)
        reasons.append(reason)
    assert REPEAT not in reasons
    # The reminder period restarted when the clock went back: due an hour after that,
    # not an hour after the (now future) time of the last send.
    state, reason = step(state, ev(T), back + 60 * M, NO_FOR)
    assert reason is REPEAT
    state, reason = step(state, ev(T), back + 65 * M, NO_FOR)
    assert reason is NONE


def test_clock_forward_then_corrected_back_does_not_silence_reminders() -> None:
    state, _ = step(AlertState("low"), ev(T), T0, NO_FOR)
    state, reason = step(state, ev(T), T0 + 24 * H, NO_FOR)  # a day ahead by mistake
    assert reason is REPEAT
    state, reason = step(state, ev(T), T0 + 5 * M, NO_FOR)  # corrected
    assert reason is NONE
    state, reason = step(state, ev(T), T0 + 65 * M, NO_FOR)
    assert reason is REPEAT


def test_clock_stepped_backwards_during_for_does_not_fire_early() -> None:
    state, _ = step(AlertState("low"), ev(T), T0, FOR_10M)
    state, reason = step(state, ev(T), T0 - 60 * M, FOR_10M)
    assert (state.status, reason) == (PENDING, NONE)
    state, reason = step(state, ev(T), T0 + 10 * M, FOR_10M)
    assert reason is FIRST


def test_firing_state_without_last_sent_does_not_repeat_at_once() -> None:
    prev = AlertState("low", FIRING, firing_since=T0, last_sent_at=None, period=1)
    _, reason = step(prev, ev(T), T0 + 10 * H, NO_FOR)
    assert reason is NONE


@pytest.mark.parametrize(
    ("reason", "send_resolved", "sends"),
    [
        (FIRST, True, True), (FIRST, False, True),
        (REPEAT, True, True), (REPEAT, False, True),
        (RESOLVED, True, True), (RESOLVED, False, False),
        (NONE, True, False), (NONE, False, False),
    ],
)
def test_notifies(reason: Reason, send_resolved: bool, sends: bool) -> None:
    policy = Policy(timedelta(0), H, send_resolved=send_resolved)
    assert notifies(reason, policy) is sends


# --------------------------------------------------------------------------- properties


@dataclass
class Period:
    first_at: datetime
    sends: list[datetime]
    resolved: int = 0


ticks = st.lists(
    st.tuples(
        st.sampled_from([T, T, T, F, U]),
        st.integers(min_value=0, max_value=90 * 60),  # seconds since the previous tick
    ),
    min_size=1,
    max_size=60,
)
policies = st.builds(
    Policy,
    pending_for=st.sampled_from([timedelta(0), 30 * 60 * timedelta(seconds=1), 10 * M, 2 * H]),
    repeat_interval=st.sampled_from([M, 30 * M, H, 6 * H]),
    send_resolved=st.booleans(),
)


@FAST
@given(ticks, policies)
def test_lifecycle_invariants_over_monotone_time(
    seq: list[tuple[Condition, int]], policy: Policy
) -> None:
    state = AlertState("low")
    now = T0
    periods: list[Period] = []
    true_since: datetime | None = None  # start of the current run of TRUE (UNKNOWN continues it)
    for cond, dt in seq:
        now += timedelta(seconds=dt)
        was_firing = state.status is FIRING
        prev = state
        state, reason = step(state, ev(cond), now, policy)

        if cond is T and true_since is None:
            true_since = now
        if cond is F:
            true_since = None

        if reason is FIRST:
            assert not was_firing, "a second FIRST inside one firing period"
            assert true_since is not None and now - true_since >= policy.pending_for
            assert not periods or periods[-1].resolved == 1
            periods.append(Period(now, [now]))
        elif reason is REPEAT:
            assert was_firing and cond is T
            assert now - periods[-1].sends[-1] >= policy.repeat_interval
            periods[-1].sends.append(now)
        elif reason is RESOLVED:
            assert was_firing and cond is F, "RESOLVED without a FIRST before it"
            periods[-1].resolved += 1
        else:
            # Nothing sent: then nothing was due.
            if cond is T and not was_firing:
                assert true_since is not None and now - true_since < policy.pending_for
            if cond is T and was_firing:
                assert now - periods[-1].sends[-1] < policy.repeat_interval
            if cond is F:
                assert not was_firing
            if cond is U:
                assert state == prev

        assert state.firing is (reason in (FIRST, REPEAT) or (was_firing and reason is NONE
                                                               and cond is not F))
        assert state.period == len(periods)

    for i, period in enumerate(periods):
        ended = i < len(periods) - 1 or state.status is not FIRING
        assert period.resolved == (1 if ended else 0)
        gaps = [b - a for a, b in zip(period.sends, period.sends[1:])]
        assert all(g >= policy.repeat_interval for g in gaps)


@FAST
@given(
    st.lists(st.integers(min_value=-2 * 86400, max_value=2 * 86400), min_size=1, max_size=80),
    st.sampled_from([M, H, 6 * H]),
)
def test_any_clock_never_sends_repeats_closer_than_repeat_interval(
    offsets: list[int], repeat: timedelta
) -> None:
    """With the clock jumping back and forth, a REPEAT needs repeat_interval of clock
    time since the last send, or since the clock last stepped back behind it."""
    policy = Policy(timedelta(0), repeat)
    state, reason = step(AlertState("low"), ev(T), T0, policy)
    assert reason is FIRST
    anchor, previous, forward, repeats = T0, T0, timedelta(0), 0
    for offset in offsets:
        now = T0 + timedelta(seconds=offset)
        forward += max(timedelta(0), now - previous)
        previous = now
        state, reason = step(state, ev(T), now, policy)
        assert reason in (REPEAT, NONE)
        if now < anchor:
            anchor = now  # a step back restarts the reminder period
        if reason is REPEAT:
            assert now - anchor >= repeat
            anchor, repeats = now, repeats + 1
    # No storm: reminders are bounded by how far the clock moved forward in all.
    assert repeats <= forward / repeat
