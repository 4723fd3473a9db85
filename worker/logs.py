"""Logging setup: one stream on stderr, every line passed through the redactor."""

from __future__ import annotations

import logging
import sys

from worker.redact import Redactor
from worker.text import escape_controls

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


def setup(level: str, redactor: Redactor) -> None:
    """Route all logs to stderr through the redactor at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(redactor))
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
