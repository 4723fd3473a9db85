"""The snapshot every output renders: firing and pending alerts under the rules in force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.domain import AlertState, FetchKind, FetchRecord, Reading, Severity, Status
from worker.settings import parse_settings
from worker.snapshot import figures, take

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SETTINGS = parse_settings("""
[[rules]]
name = "a"
type = "threshold"
below = 10.0
severity = "critical"

[[rules]]
name = "b"
type = "threshold"
below = 20.0

[[rules]]
name = "slow"
type = "threshold"
below = 30.0
for = "10m"
""", {})


def test_only_configured_rules_oldest_first_with_the_severity_in_force() -> None:
    states = {
        "b": [AlertState("b", Status.FIRING, firing_since=T0, summary="b fires")],
        "a": [AlertState("a", Status.FIRING, firing_since=T0 + timedelta(minutes=1))],
        "gone": [AlertState("gone", Status.FIRING, firing_since=T0 - timedelta(days=1))],
        "slow": [AlertState("slow", Status.PENDING, pending_since=T0 + timedelta(minutes=2))],
    }
    snap = take(T0 + timedelta(minutes=5), figures(None, [], T0, timedelta(hours=6)),
                timedelta(hours=6), None, SETTINGS.rules, states, {})
    assert [(a.rule, a.severity) for a in snap.firing] == [("b", Severity.WARNING), ("a", Severity.CRITICAL)]
    [pending] = snap.pending
    assert pending.rule == "slow" and pending.fires_at == T0 + timedelta(minutes=12)
    assert snap.firing[0].summary == "b fires"


def test_figures_are_the_burn_and_runway_of_the_window() -> None:
    history = [Reading(T0, 100.0, 0.0), Reading(T0 + timedelta(hours=1), 100.0, 4.0)]
    f = figures(history[-1], history, T0 + timedelta(hours=1), timedelta(hours=6))
    assert f.burn_per_hour == 4.0 and f.runway_hours == 24.0
    assert figures(None, history, T0, timedelta(hours=6)).runway_hours is None
    last = FetchRecord(T0, FetchKind.AUTH, "refused")
    snap = take(T0, f, timedelta(hours=6), last, SETTINGS.rules, {}, {})
    assert snap.latest == history[-1] and snap.last_fetch is last and not snap.last_fetch.ok
    assert snap.firing == () and snap.pending == () and snap.undelivered == 0
