"""Logging filters that keep an outage's log readable: one line per failure, no tracebacks.

An outage is not a bug: a traceback per request (or several, from django-redis) would bury
what else the log says while Redis or the database is down.
"""

from __future__ import annotations

import logging
import time

from apps.opie.outages import is_database_outage


def _brief(record: logging.LogRecord, message: str) -> None:
    error = record.exc_info[1] if record.exc_info else None
    record.msg = message.replace("%", "%%") + ": %s"
    record.args = (" ".join(str(error).split()),)
    record.exc_info = None
    record.exc_text = None
    record.levelno, record.levelname = logging.WARNING, "WARNING"


class BriefCacheErrors(logging.Filter):
    """django-redis's ignored errors as one warning line, at most every `interval` seconds."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or record.exc_info[1] is None:
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        _brief(record, "Redis unavailable, the cache answers as a miss")
        return True


class BriefDatabaseOutages(logging.Filter):
    """A request answered 503 because the database is down: its path and the reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_database_outage(record.exc_info[1]):
            _brief(record, record.getMessage())
        return True
