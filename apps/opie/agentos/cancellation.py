"""Run cancellation shared through Redis, so a cancel reaches a run in any process."""

from __future__ import annotations

import asyncio
import weakref

from agno.run.cancellation_management.redis_cancellation_manager import (
    RedisRunCancellationManager,
)
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

KEY_PREFIX = "agentos_cancel_"


class PerLoopRedisCancellationManager(RedisRunCancellationManager):
    """agno's Redis manager with one async client per event loop.

    An async Redis connection cannot outlive the loop that opened it, and synchronous
    callers (DRF views, commands) run each call on a fresh loop.
    """

    def __init__(self, url: str) -> None:
        super().__init__(redis_client=Redis.from_url(url), key_prefix=KEY_PREFIX)
        self._url = url
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis] = (
            weakref.WeakKeyDictionary()
        )

    def _ensure_async_client(self) -> AsyncRedis:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = AsyncRedis.from_url(self._url)
        return client
