"""Logging setup: one stream on stderr, every line passed through the redactor.

Two formats: `text` (one line a record, for people) and `json` (one object a line, for
log shippers: `ts`, `level`, `logger`, `message`, plus the structured fields a call
passes with `extra=fields(...)`). Both keep the same guarantees: every secret masked,
one line a record whatever the text holds, tracebacks kept but made safe.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from worker.redact import Redactor
from worker.text import escape_controls

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS = "fields"  # the LogRecord attribute that carries structured fields
CORE_KEYS = ("ts", "level", "logger", "message")
LogFormat = Literal["text", "json"]


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call that adds structured fields: `log.info(msg, extra=fields(event="tick"))`.

    The JSON format writes them beside the core keys; the text format leaves them out (its
    message already says it)."""
    return {FIELDS: values}


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then masks secrets in the whole record, tracebacks included.

    A record is one line: text from outside (API bodies, channel errors) may hold
    newlines or terminal escapes, which would forge log lines or repaint the terminal, so
    control characters in the message are escaped. Only a traceback adds lines, and its
    lines are escaped one by one.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S%z")
        self._redactor = redactor

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Mask before escaping: a secret written with a control character still matches.
        return escape_controls(self._redactor(super().formatMessage(record)))

    def format(self, record: logging.LogRecord) -> str:
        # The first line is formatMessage's, escaped; whatever follows is a traceback or stack.
        head, newline, trace = super().format(record).partition("\n")
        return head + newline + _escape_lines(self._redactor(trace))


def _escape_lines(text: str) -> str:
    return "\n".join(escape_controls(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: the core keys, then the record's structured fields.

    Every string, keys of the fields included, passes through the redactor; the object is
    written with ensure_ascii, so controls, separators and bidi marks are all escaped and a
    record stays one line whatever it holds. Non-finite numbers become null (JSON has none).
    A traceback goes whole into `exc` (and a stack into `stack`), redacted.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                  .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, FIELDS, None)
        if isinstance(extra, Mapping):
            doc.update((str(k), v) for k, v in extra.items() if str(k) not in CORE_KEYS)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(self._clean(doc), ensure_ascii=True, allow_nan=False, separators=(",", ":"))

    def _clean(self, value: Any) -> Any:
        """`value` made JSON-safe: strings redacted, containers walked, others as text."""
        if isinstance(value, str):
            return self._redactor(value)
        if isinstance(value, bool | int) or value is None:
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, Mapping):
            return {self._redactor(str(k)): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self._clean(v) for v in value]
        if isinstance(value, datetime):
            return value.isoformat()
        return self._redactor(str(value))


def setup(level: str, redactor: Redactor, fmt: LogFormat = "text") -> None:
    """Route all logs to stderr through the redactor at `level`, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter(redactor) if fmt == "json" else RedactingFormatter(redactor)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # apprise's Slack and JSON plugins print whole target URLs, tokens included,
    # at DEBUG; keep them out even when the operator asks for debug logs.
    logging.getLogger("apprise").setLevel(max(logging.INFO, root.level))
    # urllib3 logs every request line at DEBUG, webhook paths and query tokens included.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, root.level))
    # Alembic narrates its plugin setup at INFO on every start.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # The scheduler narrates every run at INFO, and warns of each fire time skipped
    # while a long tick runs, which the service handles by ticking again at once.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("apscheduler.scheduler").setLevel(max(logging.ERROR, root.level))
