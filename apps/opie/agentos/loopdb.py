"""Short writes sent by the event loop itself, over an async connection: no thread hop.

A turn ends with a little bookkeeping: touch the session, record the run. Through the ORM
that runs on a pool thread: it waits for the thread, then for the GIL after each round trip,
then for the loop to take the result back. At 100 streaming chats on one worker that was
52 ms (p50) for about a millisecond of SQL, and each stream waits for its record before it
ends. Here the loop sends the statement over an async psycopg connection of its own: it does
not block on it, and no thread is involved.

Only loops that serve requests for the life of the process write this way: the ASGI entry
points call `serve()`. A loop made for one call (WSGI, commands, the test client) would leave
its connection open behind it, so its writes go through the ORM. So do all writes when
`AGENTOS_SYNC_THREADS` is 0: the test suite's rows live in a transaction that only Django's
own connection can see.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import sql

# Django's connection parameters that only its own sync connections understand.
DJANGO_ONLY_PARAMS = ("cursor_factory", "context")
# How the loop's connections show in pg_stat_activity.
APPLICATION_NAME = "opie-event-loop"


class LoopDatabase:
    """One autocommit async connection per serving event loop, opened on first use."""

    def __init__(self, alias: str = DEFAULT_DB_ALIAS) -> None:
        self.alias = alias
        self._served: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
        self._connections: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, psycopg.AsyncConnection[Any]
        ] = weakref.WeakKeyDictionary()
        self._opening: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def serve(self) -> None:
        """Mark the running loop as one that lives as long as the process."""
        self._served.add(asyncio.get_running_loop())

    def available(self) -> bool:
        """Whether the running loop may write over its own connection."""
        return settings.AGENTOS_SYNC_THREADS > 0 and asyncio.get_running_loop() in self._served

    async def execute(self, query: sql.Composed, params: dict[str, Any]) -> None:
        """Run one statement; a connection that failed is dropped and the next one reopens."""
        connection = await self._connection()
        try:
            await connection.execute(query, params)
        except psycopg.Error:
            if connection.broken or connection.closed:
                await self.close()
            raise

    async def close(self) -> None:
        """Close the running loop's connection, if it has one."""
        connection = self._connections.pop(asyncio.get_running_loop(), None)
        if connection is not None:
            await connection.close()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        connection = self._connections.get(loop)
        if connection is not None and not connection.closed:
            return connection
        lock = self._opening.setdefault(loop, asyncio.Lock())
        async with lock:
            connection = self._connections.get(loop)
            if connection is None or connection.closed:
                connection = await psycopg.AsyncConnection.connect(
                    **self._params(), autocommit=True
                )
                self._connections[loop] = connection
            return connection

    def _params(self) -> dict[str, Any]:
        params = connections[self.alias].get_connection_params()
        params.setdefault("application_name", APPLICATION_NAME)
        return {key: value for key, value in params.items() if key not in DJANGO_ONLY_PARAMS}


loop_db = LoopDatabase()
