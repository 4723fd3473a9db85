"""Rendering a lifecycle transition into a title, a body, a notify type and a key."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.domain import AlertState, Condition, Evaluation, Reading, Reason, Severity, Status
from worker.domain import Figures as Context
from worker.lifecycle import Policy, step
from worker.messages import render

FAST = settings(max_examples=200, deadline=None)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
LATEST = Reading(NOW, 100.0, 87.66)  # remaining $12.34
KNOWN = Context(LATEST, burn_per_hour=4.2, runway_hours=9.0)
UNKNOWN_BURN = Context(LATEST, burn_per_hour=None, runway_hours=None)


def firing(rule: str = "low-balance", summary: str = "remaining $12.34 is below $15.00",
           repeats: int = 0) -> AlertState:
    return AlertState(rule, Status.FIRING, None, NOW - 2 * H, NOW, period=3, repeats=repeats,
                      summary=summary)


def resolved(rule: str = "low-balance") -> AlertState:
    return AlertState(rule, Status.INACTIVE, period=3, repeats=2,
                      summary="remaining $20.00 is above $15.00")


CASES = [
    (firing(), Reason.FIRST),
    (firing(repeats=1), Reason.REPEAT),
    (resolved(), Reason.RESOLVED),
]


@pytest.mark.parametrize("severity", list(Severity))
@pytest.mark.parametrize("ctx", [KNOWN, UNKNOWN_BURN, Context(None, None, None)])
def test_firing_titles_never_say_resolved(severity: Severity, ctx: Context) -> None:
    for state, reason in CASES[:2]:
        msg = render(state, reason, severity, ctx, NOW)
        assert "resolved" not in msg.title.lower()
        assert "low-balance" in msg.title


@pytest.mark.parametrize("severity", list(Severity))
def test_resolved_titles_say_resolved(severity: Severity) -> None:
    msg = render(resolved(), Reason.RESOLVED, severity, KNOWN, NOW)
    assert re.search(r"\bresolved\b", msg.title, re.IGNORECASE)
    assert "low-balance" in msg.title


@pytest.mark.parametrize(("state", "reason"), CASES)
def test_body_names_the_rule_and_the_remaining_balance(state: AlertState, reason: Reason) -> None:
    msg = render(state, reason, Severity.WARNING, KNOWN, NOW)
    assert "low-balance" in msg.body
    assert "$12.34" in msg.body


@pytest.mark.parametrize(("state", "reason"), CASES)
def test_burn_and_runway_line_when_known(state: AlertState, reason: Reason) -> None:
    msg = render(state, reason, Severity.WARNING, KNOWN, NOW)
    assert re.search(r"burning \$4\.20/h, about 9h left", msg.body, re.IGNORECASE)


@pytest.mark.parametrize(("state", "reason"), CASES)
def test_no_burn_line_when_unknown(state: AlertState, reason: Reason) -> None:
    msg = render(state, reason, Severity.WARNING, UNKNOWN_BURN, NOW)
    assert "burning" not in msg.body.lower()
    assert " left" not in msg.body.lower()
    assert "$12.34" in msg.body


def test_burn_known_but_runway_unknown_gives_the_burn_only() -> None:
    msg = render(firing(), Reason.FIRST, Severity.WARNING, Context(LATEST, 0.0, None), NOW)
    assert re.search(r"burning \$0\.00/h", msg.body, re.IGNORECASE)
    assert " left" not in msg.body.lower()


@pytest.mark.parametrize(
    ("hours", "text"), [(0.5, "30m"), (36.0, "36h"), (72.0, "3d"), (9.25, "9.2h")]
)
def test_runway_is_written_for_people(hours: float, text: str) -> None:
    msg = render(firing(), Reason.FIRST, Severity.WARNING, Context(LATEST, 1.0, hours), NOW)
    assert f"about {text} left" in msg.body


def test_no_balance_read_yet() -> None:
    msg = render(firing("fetch-failing", "3 fetches in a row failed"), Reason.FIRST,
                 Severity.CRITICAL, Context(None, None, None), NOW)
    assert "fetch-failing" in msg.body and "3 fetches in a row failed" in msg.body
    assert "$" not in msg.body


def test_firing_body_carries_the_summary() -> None:
    msg = render(firing(summary="OpenRouter refused the API key"), Reason.FIRST,
                 Severity.CRITICAL, KNOWN, NOW)
    assert "OpenRouter refused the API key" in msg.body


def test_repeat_says_how_long_it_has_been_firing() -> None:
    msg = render(firing(repeats=1), Reason.REPEAT, Severity.WARNING, KNOWN, NOW)
    assert "2h" in msg.body


def test_large_and_negative_balances() -> None:
    ctx = Context(Reading(NOW, 5000.0, 3765.5), None, None)
    assert "$1,234.50" in render(firing(), Reason.FIRST, Severity.INFO, ctx, NOW).body
    ctx = Context(Reading(NOW, 10.0, 15.0), None, None)
    assert "-$5.00" in render(firing(), Reason.FIRST, Severity.INFO, ctx, NOW).body


@pytest.mark.parametrize(
    ("severity", "reason", "notify_type"),
    [
        (Severity.CRITICAL, Reason.FIRST, "failure"),
        (Severity.WARNING, Reason.FIRST, "warning"),
        (Severity.INFO, Reason.FIRST, "info"),
        (Severity.CRITICAL, Reason.REPEAT, "failure"),
        (Severity.WARNING, Reason.REPEAT, "warning"),
        (Severity.INFO, Reason.REPEAT, "info"),
        (Severity.CRITICAL, Reason.RESOLVED, "success"),
        (Severity.WARNING, Reason.RESOLVED, "success"),
        (Severity.INFO, Reason.RESOLVED, "success"),
    ],
)
def test_notify_types(severity: Severity, reason: Reason, notify_type: str) -> None:
    state = resolved() if reason is Reason.RESOLVED else firing()
    assert render(state, reason, severity, KNOWN, NOW).notify_type == notify_type


def test_notify_types_are_apprise_values() -> None:
    apprise = pytest.importorskip("apprise")
    valid = {t.value if hasattr(t, "value") else t for t in apprise.NotifyType}
    for severity in Severity:
        assert render(firing(), Reason.FIRST, severity, KNOWN, NOW).notify_type in valid
    assert render(resolved(), Reason.RESOLVED, Severity.INFO, KNOWN, NOW).notify_type in valid


def test_idempotency_keys_differ_per_transition_and_are_stable() -> None:
    policy = Policy(timedelta(0), H)
    state = AlertState("low-balance")
    keys = []
    # Two firing periods, each with a FIRST, two REPEATs and a RESOLVED.
    times_and_conditions = [(0, Condition.TRUE), (1, Condition.TRUE), (2, Condition.TRUE),
                            (3, Condition.FALSE), (4, Condition.TRUE), (5, Condition.TRUE),
                            (6, Condition.TRUE), (7, Condition.FALSE)]
    for hours, cond in times_and_conditions:
        now = NOW + hours * H
        state, reason = step(state, Evaluation(cond, "s"), now, policy)
        assert reason is not Reason.NONE
        msg = render(state, reason, Severity.WARNING, KNOWN, now)
        again = render(state, reason, Severity.WARNING, UNKNOWN_BURN, now + H)
        assert msg.key == again.key, "the key depends on the transition only"
        assert msg.key in msg.body
        keys.append(msg.key)
    assert len(set(keys)) == len(keys), keys


def test_keys_differ_between_rules() -> None:
    a = render(firing("a"), Reason.FIRST, Severity.WARNING, KNOWN, NOW)
    b = render(firing("b"), Reason.FIRST, Severity.WARNING, KNOWN, NOW)
    assert a.key != b.key


rule_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,30}", fullmatch=True).filter(
    lambda n: "resolved" not in n.lower() and "burning" not in n.lower()
)


@FAST
@given(
    rule_names,
    st.sampled_from(list(Severity)),
    st.text(max_size=40).filter(lambda s: "resolved" not in s.lower() and "burning" not in s.lower()),
    st.floats(min_value=-1e6, max_value=1e6),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
def test_render_properties(
    rule: str, severity: Severity, summary: str, remaining: float,
    burn: float | None, runway: float | None,
) -> None:
    ctx = Context(Reading(NOW, 1e6, 1e6 - remaining), burn, runway)
    for state, reason in [(firing(rule, summary), Reason.FIRST),
                          (firing(rule, summary, repeats=2), Reason.REPEAT),
                          (resolved(rule), Reason.RESOLVED)]:
        msg = render(state, reason, severity, ctx, NOW)
        assert rule in msg.title and rule in msg.body
        said_resolved = "resolved" in msg.title.lower()
        assert said_resolved is (reason is Reason.RESOLVED)
        assert ("burning" in msg.body.lower()) is (burn is not None)
        assert re.search(r"-?\$[0-9,]+\.[0-9]{2}", msg.body)
