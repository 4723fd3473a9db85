"""Logging setup: one stream on stderr, every line passed through the redactor."""

from __future__ import annotations

import logging
import sys

from worker.redact import Redactor

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Formats as usual, then masks secrets in the whole line, tracebacks included."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S%z")
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor(super().format(record))


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
