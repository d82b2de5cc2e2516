"""agno's session store in Postgres, with history writes that outlive a database outage.

It is agno's PostgresDb with three changes.

agno writes a session and its run when a run ends, synchronously and once: if the database
is restarting at that moment the write fails, agno logs it, and the turn the user has just
read would be missing from the session's history. Here a write that fails because the
database is unreachable is tried again in the background until it lands (about a minute).
Both writes are upserts, so trying again cannot duplicate anything. A session read whose
pooled connection died in a restart is tried once more (the engine does not ping connections
before use). And agno's update of the approvals of each finished run is skipped: Opie has no
approval flows (the AgentOS server does not serve agno's approval routes), so it was a
transaction per turn that changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from agno.db.postgres import PostgresDb

from apps.opie.outages import RETRY_DELAYS, is_database_outage, outlasting_outage

logger = logging.getLogger(__name__)

# Retries in flight, held so the event loop does not drop them.
_pending: set[asyncio.Task[None]] = set()


class OpieAgnoDb(PostgresDb):
    """PostgresDb whose session and run upserts are retried after a database outage."""

    def get_session(self, *args: Any, **kwargs: Any) -> Any:
        """agno's read, tried once more if its pooled connection died with a restart.

        The engine does not ping each connection before use (three round trips per turn on
        the event loop); a dead one fails its first statement, SQLAlchemy then discards the
        pool, and the second try connects afresh. A database that is really down fails both.
        """
        try:
            return super().get_session(*args, **kwargs)
        except Exception as exc:
            if not is_database_outage(exc):
                raise
        return super().get_session(*args, **kwargs)

    def upsert_session(self, session: Any, deserialize: bool | None = True) -> Any:
        """agno's upsert; on an outage it is also retried in the background."""
        try:
            return super().upsert_session(session, deserialize=deserialize)
        except Exception as exc:
            if is_database_outage(exc):
                write = super().upsert_session
                _retry_later(f"session {session.session_id}", lambda: write(session))
            raise

    def upsert_run(
        self,
        run: Any,
        session_id: str,
        user_id: str | None = None,
        run_index: int | None = None,
    ) -> Any:
        """agno's upsert; on an outage it is also retried in the background."""
        try:
            return super().upsert_run(run, session_id, user_id=user_id, run_index=run_index)
        except Exception as exc:
            if is_database_outage(exc):
                write = super().upsert_run
                _retry_later(
                    f"run {run.run_id}",
                    lambda: write(run, session_id, user_id=user_id, run_index=run_index),
                )
            raise

    def update_approval_run_status(self, run_id: str, run_status: Any) -> int:
        """No approvals exist in Opie: nothing to update, and no round trip."""
        return 0


def _retry_later(what: str, write: Callable[[], Any]) -> None:
    """Retry a failed agno write in the background, on the running loop or a thread of its own."""
    logger.warning("Could not store %s in agno's history yet; retrying in the background", what)

    async def retry() -> None:
        await asyncio.sleep(RETRY_DELAYS[0])
        await outlasting_outage(f"{what} in agno's history", lambda: asyncio.to_thread(write))

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a synchronous caller: no loop to hand the retries to
        threading.Thread(target=asyncio.run, args=(retry(),), daemon=True).start()
        return
    task = loop.create_task(retry())
    _pending.add(task)
    task.add_done_callback(_pending.discard)
