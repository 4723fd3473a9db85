"""Fault injection: one broken rule, or one broken channel, must not stop the rest.

Both faults are real code raising inside the tick, not stubs of our own
functions: the rule fault goes into worker.rules' registry (the one
place a rule's code is looked up), and the channel fault is a genuine apprise
plugin, registered with apprise's own @notify decorator, that raises from its
send. The tick is run in process with Deps built exactly as `check` builds
them, and its log is read as the operator would see it on stderr.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import apprise.decorators
import pytest
from fakes import FakeOpenRouter, WebhookReceiver, write_settings
from sqlalchemy import text

from worker import commands
from worker.app import App
from worker.rules import REGISTRY
from worker.tick import Deps, run_tick

KEY = "sk-or-v1-isolation-CANARY-7f3a9c"
ENV = {"OPENROUTER_API_KEY": KEY}
BOOM_TOKEN = "cwboomTOKEN5c1e8d2b"  # a secret inside the broken channel's URL
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)

# A real apprise plugin whose own code raises: apprise calls it like any other service.
# Sends run in creditwatch's sender child process, which loads it from a file through
# $APPRISE_PLUGIN_PATH (apprise's own convention); this process registers the same code
# so that validating the channel URL in process knows the scheme too.
PLUGIN = f"""
import os
from apprise.decorators import notify


@notify(on="cwboom", name="creditwatch test: a channel that raises")
def _cwboom(body, title, notify_type, meta, *args, **kwargs):
    with open(os.environ["CW_BOOM_CALLS"], "a", encoding="utf-8") as calls:
        calls.write(title + "\\n")
    msg = f"plugin crashed talking to {{meta.get('url')}} with token {BOOM_TOKEN} and key {KEY}"
    raise RuntimeError(msg)
"""


@apprise.decorators.notify(on="cwboom", name="creditwatch test: a channel that raises")
def _cwboom(body: str, title: str, notify_type: str, meta: dict[str, Any], *args: Any,
            **kwargs: Any) -> bool:
    msg = "the in-process copy of the plugin is for URL validation only"
    raise AssertionError(msg)


@pytest.fixture
def boom_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin file for the sender child, and the file where it records each call."""
    plugins = tmp_path / "apprise-plugins"
    plugins.mkdir()
    (plugins / "cwboom.py").write_text(PLUGIN, encoding="utf-8")
    calls = tmp_path / "boom-calls.txt"
    monkeypatch.setenv("APPRISE_PLUGIN_PATH", str(plugins))
    monkeypatch.setenv("CW_BOOM_CALLS", str(calls))
    yield calls


def settings_file(tmp_path: Path, api: FakeOpenRouter, channels: Mapping[str, str]) -> Path:
    chans = "".join(f'[[channels]]\nname = "{n}"\nurl = "{u}"\n\n' for n, u in channels.items())
    return write_settings(tmp_path, textwrap.dedent(f"""
        [openrouter]
        base_url = "{api.base_url}"
        timeout = "2s"

        [database]
        url = "sqlite:///{tmp_path}/cw.db"

        [forecast]
        window = "1h"

        """) + chans + textwrap.dedent("""
        [[rules]]
        name = "burn"
        type = "burn_rate"
        window = "1h"
        above = 1.0

        [[rules]]
        name = "low"
        type = "threshold"
        below = 50.0

        [[rules]]
        name = "runway"
        type = "runway"
        window = "1h"
        below = "24h"
        severity = "critical"

        [[rules]]
        name = "fetch"
        type = "fetch_failure"
        consecutive = 1
        """))


def load_in_process(config: Path, log_level: str) -> tuple[App, Deps]:
    """Settings, log setup, engine and Deps exactly as `check` builds them, migrated."""
    args = argparse.Namespace(config=str(config), log_level=log_level)
    loaded = commands.load(args, ENV, need_key=True)
    loaded.migrate()
    deps: Deps = loaded.deps
    return loaded, deps


@pytest.fixture
def built(restore_logging: None) -> Iterator[list[tuple[App, Deps]]]:
    made: list[tuple[App, Deps]] = []
    yield made
    for loaded, deps in made:
        deps.http.close()
        loaded.engine.dispose()


def rules_in(messages: list[dict[str, Any]]) -> list[str]:
    return sorted(str(m["message"]).splitlines()[-1].removeprefix("ref: ") for m in messages)


def test_a_rule_that_raises_is_logged_redacted_and_skipped(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        built: list[tuple[App, Deps]]) -> None:
    config = settings_file(tmp_path, fake_api, {"hook": webhook.apprise_url()})
    built.append(load_in_process(config, "INFO"))
    _, deps = built[-1]

    def broken(rule: object, facts: object) -> object:
        msg = f"division by zero while using key {KEY}"
        raise ZeroDivisionError(msg)

    # Fault injection into the real registry: burn_rate, listed first, raises.
    monkeypatch.setitem(REGISTRY, "burn_rate", replace(REGISTRY["burn_rate"], evaluate=broken))
    fake_api.set_balance(100.0, 60.0)
    first = run_tick(deps, T0)
    fake_api.set_balance(100.0, 62.0)
    second = run_tick(deps, T0 + STEP)

    # The other rules fired and their messages were delivered.
    assert [name for name, _ in first.firing] == ["low"]
    assert sorted(name for name, _ in second.firing) == ["low", "runway"]
    assert second.exit_code == 2  # runway is critical
    assert rules_in(webhook.messages) == ["low#1/first", "runway#1/first"]

    # Logged once per tick, at ERROR, naming the rule, with the key masked.
    err = capsys.readouterr().err
    assert KEY not in err
    skipped = [line for line in err.splitlines() if "rule burn failed and was skipped" in line]
    assert len(skipped) == 2, err
    assert all(" ERROR " in line and "ZeroDivisionError" in line and "***" in line
               for line in skipped), skipped
    assert "Traceback" not in err

    # Skipped, not disabled: once the rule's code works again it fires at the next tick.
    monkeypatch.undo()
    fake_api.set_balance(100.0, 64.0)
    third = run_tick(deps, T0 + 2 * STEP)
    assert sorted(name for name, _ in third.firing) == ["burn", "low", "runway"]
    assert rules_in(webhook.messages) == ["burn#1/first", "low#1/first", "runway#1/first"]


def test_a_rule_that_raises_leaves_its_alert_as_it_was(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        monkeypatch: pytest.MonkeyPatch, built: list[tuple[App, Deps]]) -> None:
    """A firing alert whose rule starts raising neither resolves nor repeats."""
    config = settings_file(tmp_path, fake_api, {"hook": webhook.apprise_url()})
    built.append(load_in_process(config, "WARNING"))
    _, deps = built[-1]
    fake_api.set_balance(100.0, 60.0)
    assert [n for n, _ in run_tick(deps, T0).firing] == ["low"]

    def broken(rule: object, facts: object) -> object:
        raise KeyError("boom")

    monkeypatch.setitem(REGISTRY, "threshold", replace(REGISTRY["threshold"], evaluate=broken))
    fake_api.set_balance(1000.0, 0.0)  # would resolve, were the rule able to say so
    report = run_tick(deps, T0 + timedelta(hours=7))  # past repeat_interval (6h) too

    assert [n for n, _ in report.firing] == ["low"]
    assert rules_in(webhook.messages) == ["low#1/first"]


def test_a_channel_that_raises_keeps_its_message_and_the_others_are_delivered(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        capsys: pytest.CaptureFixture[str], built: list[tuple[App, Deps]],
        boom_calls: Path) -> None:
    boom_url = f"cwboom://ops:{BOOM_TOKEN}@x/"
    config = settings_file(tmp_path, fake_api, {"boom": boom_url, "hook": webhook.apprise_url()})
    # DEBUG: the level at which apprise would print the plugin's exception text.
    built.append(load_in_process(config, "DEBUG"))
    loaded, deps = built[-1]

    fake_api.set_balance(100.0, 60.0)  # low fires: one message per channel
    report = run_tick(deps, T0)

    assert boom_calls.exists(), "the broken plugin was never called"
    assert (report.delivered, report.failed) == (1, 1)
    assert rules_in(webhook.messages) == ["low#1/first"]
    assert outbox(loaded) == [("boom", "failed", 1), ("hook", "delivered", 1)]

    # The next tick retries the broken channel only; the healthy one is not re-sent.
    fake_api.set_balance(100.0, 60.0)
    again = run_tick(deps, T0 + STEP)
    assert (again.delivered, again.failed) == (0, 1)
    assert len(webhook.messages) == 1
    assert outbox(loaded) == [("boom", "failed", 2), ("hook", "delivered", 1)]

    err = capsys.readouterr().err
    assert deps.redact(f"x {BOOM_TOKEN} {KEY}") == "x *** ***"  # the redactor knows both
    assert BOOM_TOKEN not in err and KEY not in err, err
    refused = [line for line in err.splitlines() if "channel boom did not accept" in line]
    assert len(refused) == 2 and all("stays in the outbox" in line for line in refused), err
    assert "Traceback" not in err
    with loaded.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("SELECT * FROM outbox")) for v in row)
    assert BOOM_TOKEN not in stored and KEY not in stored


def test_a_channel_that_raises_does_not_hold_back_a_resolution_elsewhere(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
        built: list[tuple[App, Deps]], boom_calls: Path) -> None:
    config = settings_file(tmp_path, fake_api,
                           {"boom": f"cwboom://ops:{BOOM_TOKEN}@x/", "hook": webhook.apprise_url()})
    built.append(load_in_process(config, "WARNING"))
    loaded, deps = built[-1]
    fake_api.set_balance(100.0, 60.0)
    run_tick(deps, T0)
    fake_api.set_balance(1000.0, 60.0)
    run_tick(deps, T0 + STEP)

    assert rules_in(webhook.messages) == ["low#1/first", "low#1/resolved"]
    # The broken channel keeps both, in order: the resolution waits behind the first.
    assert outbox(loaded) == [("boom", "failed", 2), ("boom", "pending", 0),
                              ("hook", "delivered", 1), ("hook", "delivered", 1)]


def outbox(loaded: App) -> list[tuple[str, str, int]]:
    with loaded.engine.connect() as conn:
        rows = conn.execute(text("SELECT channel, status, attempts FROM outbox ORDER BY channel, id"))
        return [(str(c), str(s), int(a)) for c, s, a in rows]
