"""The on-call decisions as pure functions: silences and inhibition (routing), grouping,
digest periods and figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import digest
from worker.domain import AlertState, Figures, Message, Reading, Reason, Severity, Silence, Status
from worker.grouping import group
from worker.routing import held_back, route
from worker.settings import parse_settings

NOW = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)
RULES = parse_settings("""
[[rules]]
name = "low"
type = "threshold"
below = 20.0
inhibited_by = ["critical"]

[[rules]]
name = "critical"
type = "threshold"
below = 5.0
""", {}).rules
LOW = RULES[0]
FIRING = AlertState("low", Status.FIRING, firing_since=NOW, last_sent_at=NOW, period=1)


def test_a_silence_covers_its_rule_its_account_and_its_time() -> None:
    silence = Silence(3, "low", "prod", NOW - timedelta(hours=1), NOW + timedelta(hours=1))
    assert held_back(LOW, "prod", [silence], set(), NOW) == "silenced (#3) until 2026-11-29T11:30:00Z"
    assert held_back(LOW, "dev", [silence], set(), NOW) is None
    assert held_back(LOW, "prod", [silence], set(), NOW + timedelta(hours=1)) is None  # ended
    everywhere = Silence(4, "low", None, NOW, NOW + timedelta(minutes=1))
    assert held_back(LOW, "dev", [everywhere], set(), NOW) is not None
    assert held_back(LOW, "prod", [], {"critical"}, NOW) == "inhibited by critical, which fires"
    assert held_back(RULES[1], "prod", [], {"low"}, NOW) is None  # inhibition has a direction


def test_route_holds_back_then_announces_what_was_held() -> None:
    # A first message held back is announced as the first once it may be.
    state, reason, send = route(FIRING, Reason.FIRST, "silenced", True, NOW)
    assert (state.muted, reason, send) == ("first", Reason.FIRST, False)
    later = NOW + timedelta(minutes=5)
    state, reason, send = route(state, Reason.NONE, None, False, later)
    assert (state.muted, reason, send, state.last_sent_at) == ("", Reason.FIRST, True, later)
    # A reminder held back comes as a reminder, at once, with the next number.
    state, reason, send = route(replace_repeats(FIRING, 1), Reason.REPEAT, "inhibited", True, NOW)
    assert (state.muted, send) == ("repeat", False)
    state, reason, send = route(state, Reason.NONE, None, False, later)
    assert (reason, send, state.repeats) == (Reason.REPEAT, True, 2)
    # A resolve of an alert never announced says nothing, and forgets what was held.
    never = AlertState("low", Status.INACTIVE, muted="first")
    assert route(never, Reason.RESOLVED, None, True, NOW) == (AlertState("low"), Reason.RESOLVED, False)
    # Still held: nothing changes.
    assert route(replace_muted(FIRING, "repeat"), Reason.NONE, "silenced", False, NOW)[2] is False


def replace_repeats(state: AlertState, n: int) -> AlertState:
    from dataclasses import replace

    return replace(state, repeats=n)


def replace_muted(state: AlertState, muted: str) -> AlertState:
    from dataclasses import replace

    return replace(state, muted=muted)


def message(rule: str, channel: str, severity: Severity = Severity.WARNING,
            reason: Reason = Reason.FIRST) -> Message:
    return Message(rule, channel, reason, severity, f"[{severity.value.upper()}] {rule}, $1.00 left",
                   f"body of {rule}\nref: {rule}#1/{reason.value}", "warning", f"{rule}#1/{reason.value}")


def test_grouping_makes_one_message_per_channel_and_keeps_every_ref() -> None:
    messages = [message("a", "chat"), message("b", "chat", Severity.CRITICAL), message("a", "mail"),
                message("c", "chat", reason=Reason.RESOLVED)]
    assert group(messages, enabled=False) == messages
    chat, mail = group(messages, enabled=True)
    assert mail == messages[2]
    assert chat.title.startswith("[CRITICAL] 3 notifications (2 firing, 1 resolved): ")
    assert chat.severity is Severity.CRITICAL and chat.key == "a#1/first+2"
    assert [line for line in chat.body.splitlines() if line.startswith("ref: ")] == [
        "ref: a#1/first", "ref: b#1/first", "ref: c#1/resolved"]


@pytest.mark.parametrize(("now", "every", "at", "zone", "period"), [
    # Daily at 09:00 Paris time: the period that ended at 08:00 UTC (CET is UTC+1).
    (datetime(2026, 11, 29, 10, 30, tzinfo=UTC), "1d", "09:00", "Europe/Paris",
     (datetime(2026, 11, 28, 8, 0, tzinfo=UTC), datetime(2026, 11, 29, 8, 0, tzinfo=UTC))),
    # Before today's 09:00: yesterday's period is the newest complete one.
    (datetime(2026, 11, 29, 7, 30, tzinfo=UTC), "1d", "09:00", "Europe/Paris",
     (datetime(2026, 11, 27, 8, 0, tzinfo=UTC), datetime(2026, 11, 28, 8, 0, tzinfo=UTC))),
    # Across daylight saving time (Paris moved to UTC+2 on 2026-03-29): still 09:00 local.
    (datetime(2026, 3, 30, 12, 0, tzinfo=UTC), "1d", "09:00", "Europe/Paris",
     (datetime(2026, 3, 29, 7, 0, tzinfo=UTC), datetime(2026, 3, 30, 7, 0, tzinfo=UTC))),
    # Weekly: Mondays (2026-11-23 is one).
    (datetime(2026, 11, 29, 10, 0, tzinfo=UTC), "7d", "00:00", "UTC",
     (datetime(2026, 11, 16, 0, 0, tzinfo=UTC), datetime(2026, 11, 23, 0, 0, tzinfo=UTC))),
    # Hourly.
    (datetime(2026, 11, 29, 10, 30, tzinfo=UTC), "1h", "00:00", "UTC",
     (datetime(2026, 11, 29, 9, 0, tzinfo=UTC), datetime(2026, 11, 29, 10, 0, tzinfo=UTC))),
])
def test_digest_periods(now: datetime, every: str, at: str, zone: str,
                        period: tuple[datetime, datetime]) -> None:
    from worker.durations import parse_duration

    assert digest.latest_period(now, parse_duration(every), at, ZoneInfo(zone)) == period


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10 * 365 * 24), st.sampled_from(["1h", "6h", "1d", "7d"]))
def test_a_period_always_ends_at_or_before_now_and_lasts_every(hours: int, every: str) -> None:
    from worker.durations import parse_duration

    now = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(hours=hours, minutes=17)
    span = parse_duration(every)
    start, end = digest.latest_period(now, span, "09:00", ZoneInfo("Europe/Paris"))
    assert end <= now < end + span + timedelta(hours=1)  # an hour of slack across DST
    assert abs((end - start) - span) <= timedelta(hours=1)


def test_digest_figures_count_only_spend_and_the_peak_hour() -> None:
    start = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    readings = [Reading(start + timedelta(minutes=30 * i), 100.0 + (50 if i == 3 else 0), u)
                for i, u in enumerate([10.0, 11.0, 15.0, 15.0, 14.0, 16.0])]  # a top-up, a refund
    period = digest.AccountPeriod("default", readings, Figures(readings[-1], 2.0, 5.0), ["low#1/first"])
    s = digest.summarise(period, start, start + timedelta(hours=3))
    assert s.spend == 7.0 and s.peak_burn == 4.0 and s.average_burn == pytest.approx(7 / 3)
    assert s.lowest == min(r.remaining for r in readings) == 84.0
    title, body = digest.render([period], start, start + timedelta(hours=3), ZoneInfo("UTC"), False, "3h")
    assert "Alerts of the period: low#1/first" in body and "Peak burn: $4.00/h" in body
