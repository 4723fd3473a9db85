"""`[logging] format = "json"`: one JSON object a line with ts, level, logger and message,
plus the structured fields a call passes; every value redacted and escaped, tracebacks kept
on the same line. In process for the formatter, then through the real `check` and `run`."""

from __future__ import annotations

import io
import json
import logging
import math
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, StartCli
from fakes import FakeOpenRouter, WebhookReceiver, make_settings

from worker import logs
from worker.logs import JsonFormatter, RedactingFormatter, fields
from worker.redact import Redactor

KEY = "sk-or-v1-json-logs-0010"
ENV = {"OPENROUTER_API_KEY": KEY}
SECRET = "hunter2-json-CANARY-77"
TOKEN = "AbCdEf0123456789TokenXyz"  # a webhook token, masked by apprise-aware inspection
CORE = ("ts", "level", "logger", "message")
JSON_LOGS = '[logging]\nformat = "json"\n'
LOW_RULE = '[[rules]]\nname = "low"\ntype = "threshold"\nbelow = 10.0\n'


@pytest.fixture
def captured(restore_logging: None) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose records go through logs.setup's JSON handler into a string."""
    logs.setup("DEBUG", Redactor([SECRET]), fmt="json")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    yield logging.getLogger("creditwatch.test"), stream


def records(text: str) -> list[dict[str, Any]]:
    """Every line of `text` as a JSON object (AssertionError names a line that is not)."""
    out = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(doc, dict), line
        assert all(key in doc for key in CORE), line
        out.append(doc)
    return out


# --------------------------------------------------------------------------- the formatter


def test_a_record_is_one_object_with_the_core_keys(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured

    log.warning("balance is %s", "$5.00")

    [doc] = records(stream.getvalue())
    assert doc["level"] == "WARNING" and doc["logger"] == "creditwatch.test"
    assert doc["message"] == "balance is $5.00"
    at = datetime.fromisoformat(doc["ts"])
    assert doc["ts"].endswith("Z") and at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)


def test_structured_fields_sit_beside_the_core_keys(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured

    log.info("tick", extra=fields(event="tick", fetch="ok", remaining=12.5, duration_s=0.25,
                                  fired=["low"], repeated=[], resolved=[], delivered=1, failed=0,
                                  message="a field cannot replace the message", level="nor the level"))

    [doc] = records(stream.getvalue())
    assert doc["message"] == "tick" and doc["level"] == "INFO"
    assert {k: doc[k] for k in ("event", "fetch", "remaining", "duration_s", "fired", "delivered")} == {
        "event": "tick", "fetch": "ok", "remaining": 12.5, "duration_s": 0.25, "fired": ["low"],
        "delivered": 1}


def test_every_value_is_redacted_and_the_line_stays_one_line(
        captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    hostile = f"key={SECRET}\nforged line\x1b[2J\u202eevil\u2028"

    log.error("outside said: %s", hostile, extra=fields(error=hostile, nested={"deep": [SECRET]},
                                                        ratio=math.nan, big=math.inf))

    text = stream.getvalue()
    assert text.count("\n") == 1 and SECRET not in text
    assert text.isascii(), "controls, separators and bidi marks must be escaped"
    [doc] = records(text)
    assert doc["message"] == "outside said: key=***\nforged line\x1b[2J\u202eevil\u2028"
    assert doc["error"].startswith("key=***") and doc["nested"] == {"deep": ["***"]}
    assert doc["ratio"] is None and doc["big"] is None  # JSON has no NaN or Infinity


def test_a_traceback_is_kept_redacted_on_the_same_line(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured

    try:
        raise RuntimeError(f"connect failed with password {SECRET}")
    except RuntimeError:
        log.exception("tick failed")

    text = stream.getvalue()
    assert text.count("\n") == 1 and SECRET not in text
    [doc] = records(text)
    assert doc["message"] == "tick failed"
    assert "Traceback" in doc["exc"] and "RuntimeError: connect failed with password ***" in doc["exc"]


def test_text_stays_the_default(restore_logging: None) -> None:
    logs.setup("INFO", Redactor())

    [handler] = logging.getLogger().handlers
    assert isinstance(handler.formatter, RedactingFormatter)
    logs.setup("INFO", Redactor(), fmt="json")
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)


# --------------------------------------------------------------------------- the real CLI


def test_every_line_of_a_json_check_parses(
        tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver, cli: Cli) -> None:
    fake_api.set_balance(100.0, 95.0)  # $5.00 left: "low" fires
    webhook.set_failing(True)  # and its delivery fails: a WARNING line naming the channel
    cfg = make_settings(tmp_path, fake_api, channels={"hook": webhook.apprise_url(f"hooks/{TOKEN}")},
                        rules=LOW_RULE, extra=JSON_LOGS)

    result = cli(cfg, "check")

    assert result.code == 1, result  # WARNING: "low" fires
    docs = records(result.stderr)
    assert docs, "check logged nothing"
    assert any(d["level"] == "WARNING" for d in docs), docs
    assert KEY not in result.stderr and TOKEN not in result.stderr


def test_every_line_of_a_json_run_parses(
        tmp_path: Path, fake_api: FakeOpenRouter, start_cli: StartCli) -> None:
    cfg = make_settings(tmp_path, fake_api, extra=JSON_LOGS)
    proc = start_cli("run", config=cfg, env=ENV)

    fake_api.wait_for_requests(2, timeout=15)
    result = proc.stop(signal.SIGTERM, timeout=20)

    assert result.code == 0, result
    docs = records(result.stderr)
    assert len(docs) >= 3, docs  # start-up, two ticks, the stop
    assert {d["logger"] for d in docs} >= {"creditwatch.service"}
    assert KEY not in result.stderr
