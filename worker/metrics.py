"""/metrics in the Prometheus text format, through prometheus_client on a registry of our own
(metrics are wired, not global).

Gauges are read from the snapshot of the last tick at scrape time, so they are the very
figures `status` shows (no second computation); counters and the tick-duration histogram
are fed by each tick's report. A figure that is unknown (burn with fewer than two readings,
runway without spend) is absent rather than a made-up value. No label or value holds a secret.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from worker import __version__
from worker.domain import FetchKind
from worker.settings_base import RuleBase
from worker.snapshot import Snapshot, TickReport

# Ticks take milliseconds unless a peer hangs; the top buckets are the bounds of a hung fetch
# or send (timeouts of 10 s and more).
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
OUTCOMES = ("delivered", "failed", "dropped")


class Metrics:
    """creditwatch's metrics for one `run`; `observe` after each tick, `exposition` per scrape."""

    def __init__(self, rules: Sequence[RuleBase], channels: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._snapshots: tuple[Snapshot, ...] = ()
        self._rules = tuple(rules)
        self._channels = tuple(channels)
        self.leader: bool | None = None  # None: no lease in use
        self._fetches = Counter("creditwatch_fetches", "Balance fetches, by outcome.", ["outcome"],
                                registry=self.registry)
        self._notifications = Counter("creditwatch_notifications",
                                      "Notifications, by channel and outcome.", ["channel", "outcome"],
                                      registry=self.registry)
        self._ticks = Histogram("creditwatch_tick_duration_seconds", "Wall time of one tick.",
                                buckets=TICK_BUCKETS, registry=self.registry)
        for kind in FetchKind:
            self._fetches.labels(kind.value)  # every series exists from the start: rate() works
        for channel in self._channels:
            for outcome in OUTCOMES:
                self._notifications.labels(channel, outcome)
        self.registry.register(_FromSnapshot(self))

    def observe(self, report: TickReport) -> None:
        """Count what one tick did and keep its snapshot for the gauges."""
        self._fetches.labels(report.outcome.kind.value).inc()
        self._ticks.observe(report.seconds)
        delivery = report.delivery
        for outcome, counts in (("delivered", delivery.delivered), ("failed", delivery.failed),
                                ("dropped", delivery.dropped)):
            for channel, n in counts.items():
                self._notifications.labels(channel, outcome).inc(n)
        self.show(report.snapshots)

    def show(self, snapshots: Sequence[Snapshot]) -> None:
        with self._lock:
            self._snapshots = tuple(snapshots)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def snapshots(self) -> tuple[Snapshot, ...]:
        with self._lock:
            return self._snapshots


class _FromSnapshot(Collector):
    """The gauges, from the last tick's snapshot at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self._metrics
        info = InfoMetricFamily("creditwatch_build", "The running creditwatch.")
        info.add_metric([], {"version": __version__})
        yield info
        if m.leader is not None:
            yield _gauge("creditwatch_leader", "1 on the replica that leads, 0 on a standby.", [],
                         [([], float(m.leader))])
        snaps = m.snapshots()
        if not snaps:
            return
        yield from _balances(snaps)
        yield _gauge("creditwatch_alert_firing", "1 while the rule's alert fires (for any key of a "
                     "per-key rule), else 0.", ["account", "rule", "severity"],
                     [([s.account, r.name, r.severity.value], float(r.name in {a.rule for a in s.firing}))
                      for s in snaps for r in m._rules if r.applies_to(s.account)])
        waiting = snaps[0].waiting
        yield _gauge("creditwatch_outbox_pending", "Notifications waiting for delivery.", ["channel"],
                     [([c], float(waiting.get(c, 0))) for c in m._channels])


def _balances(snaps: Sequence[Snapshot]) -> Iterable[Metric]:
    """One series per account; an account whose figure is unknown has no sample of it."""
    known = [s for s in snaps if s.latest is not None]
    labels = ["account"]
    series = (
        ("creditwatch_remaining_usd", "total_credits - total_usage at the last reading.",
         [([s.account], s.latest.remaining) for s in known if s.latest]),
        ("creditwatch_total_credits_usd", "total_credits at the last reading.",
         [([s.account], s.latest.total_credits) for s in known if s.latest]),
        ("creditwatch_total_usage_usd", "total_usage at the last reading.",
         [([s.account], s.latest.total_usage) for s in known if s.latest]),
        ("creditwatch_last_success_timestamp_seconds", "Unix time of the last successful balance fetch.",
         [([s.account], s.latest.fetched_at.timestamp()) for s in known if s.latest]),
        ("creditwatch_burn_rate_usd_per_hour", "Spend per hour over [forecast] window.",
         [([s.account], s.figures.burn_per_hour) for s in snaps if s.figures.burn_per_hour is not None]),
        ("creditwatch_runway_seconds", "Forecast time until the balance reaches zero.",
         [([s.account], s.figures.runway_hours * 3600) for s in snaps if s.figures.runway_hours is not None]),
    )
    for name, documentation, samples in series:
        if samples:
            yield _gauge(name, documentation, labels, samples)


def _gauge(name: str, documentation: str, labels: list[str],
           samples: Iterable[tuple[list[str], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family
