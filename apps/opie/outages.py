"""A database that cannot be reached is an outage to report, not a bug: 503 and try again.

Django wraps the driver's failures (a refused connection, a connection closed by a restart,
a pool with no free connection in time) in `OperationalError` and `InterfaceError`,
SQLAlchemy, under agno's store, in errors that keep psycopg's own, and the event loop's own
writes raise psycopg's directly. Every door answers them alike: 503 with `Retry-After`, in
JSON on the APIs and as a page on the web.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg
from django.db import InterfaceError, OperationalError

DATABASE_UNAVAILABLE = "database_unavailable"
DATABASE_UNAVAILABLE_MESSAGE = (
    "The database is unavailable right now; nothing was changed. Please try again in a few seconds."
)
logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# Background writes (a run's bookkeeping, agno's history) wait out an outage of about a minute.
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def is_database_outage(exc: BaseException | None) -> bool:
    """Whether exc says the database could not be reached or dropped the connection."""
    driver_errors = psycopg.OperationalError | psycopg.InterfaceError
    # Writes sent by the event loop (loopdb) raise the driver's own errors; SQLAlchemy,
    # under agno's session store, keeps them in `orig`.
    return isinstance(exc, OperationalError | InterfaceError | driver_errors) or isinstance(
        getattr(exc, "orig", None), driver_errors
    )


async def outlasting_outage(what: str, attempt: Callable[[], Awaitable[object]]) -> None:
    """Await `attempt` until it succeeds, trying again while the database is unavailable.

    For background writes whose caller has moved on: any other failure, or an outage longer
    than RETRY_DELAYS, is logged and given up.
    """
    for delay in (*RETRY_DELAYS, None):
        try:
            await attempt()
            return
        except Exception as exc:
            if delay is None or not is_database_outage(exc):
                logger.exception("Gave up storing %s", what)
                return
            reason = " ".join(str(exc).split())[:200]
            logger.warning("Could not store %s yet (%s); retrying in %ss", what, reason, delay)
            await asyncio.sleep(delay)
