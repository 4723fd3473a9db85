"""The Prometheus harness (tests/prom.py) proved on a tiny prometheus_client registry served
from a loopback server in this test: promtool judges expositions, and a real Prometheus
scrapes the server with up == 1 and reads a gauge's value."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes import LOOPBACK
from prom import Prometheus, check_metrics, needs_prometheus, same
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

pytestmark = needs_prometheus


def tiny_registry(remaining: float) -> tuple[CollectorRegistry, Gauge]:
    registry = CollectorRegistry()
    gauge = Gauge("creditwatch_remaining_usd", "Credits left, in USD.", registry=registry)
    gauge.set(remaining)
    fetches = Counter("creditwatch_fetches", "Fetches by outcome.", ["outcome"], registry=registry)
    fetches.labels("ok").inc()
    return registry, gauge


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """One server for the whole module: starting one takes a few seconds."""
    with Prometheus(tmp_path_factory.mktemp("prometheus")) as server:
        yield server


def test_promtool_accepts_a_clean_exposition() -> None:
    registry, _ = tiny_registry(12.5)

    checked = check_metrics(generate_latest(registry))

    assert checked.ok, checked


@pytest.mark.parametrize("exposition", [
    # a counter without _total, and a metric without HELP: lint problems
    "# TYPE cw_fetches counter\ncw_fetches 1\n",
    # not the text format at all
    "creditwatch_remaining_usd twelve\n",
], ids=["lint", "parse"])
def test_promtool_refuses_a_broken_exposition(exposition: str) -> None:
    checked = check_metrics(exposition)

    assert not checked.ok and checked.code != 0, checked


def dead_target() -> str:
    """A loopback address where nothing listens any more."""
    registry, _ = tiny_registry(1.0)
    httpd, thread = start_http_server(0, addr=LOOPBACK, registry=registry)
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
    return f"{LOOPBACK}:{httpd.server_port}"


def test_prometheus_scrapes_a_loopback_target(prometheus: Prometheus) -> None:
    registry, gauge = tiny_registry(12.5)
    httpd, thread = start_http_server(0, addr=LOOPBACK, registry=registry)
    live, dead = f"{LOOPBACK}:{httpd.server_port}", dead_target()
    try:
        # Both in one go: Prometheus applies new targets at most every 5 s.
        prometheus.set_targets([live, dead])

        assert prometheus.wait_for(f'up{{instance="{live}"}}', same(1.0)) == 1.0
        # The control: a scrape that fails reads as up == 0, so the line above means something.
        assert prometheus.wait_for(f'up{{instance="{dead}"}}', same(0.0)) == 0.0
        assert prometheus.wait_for("creditwatch_remaining_usd", same(12.5)) == 12.5
        gauge.set(3.25)  # a later scrape sees the new value
        assert prometheus.wait_for("creditwatch_remaining_usd", same(3.25)) == 3.25
        assert prometheus.value('creditwatch_fetches_total{outcome="ok"}') == 1.0
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
