"""Run cancellation shared through Redis, so a cancel reaches a run in any process."""

from __future__ import annotations

import asyncio
import time
import weakref

from agno.run.cancellation_management.redis_cancellation_manager import (
    RedisRunCancellationManager,
)
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from apps.opie.agentos.lru import LRU

KEY_PREFIX = "agentos_cancel_"
# agno asks whether a run was cancelled before every streamed chunk: 50 Redis reads for a
# 50-token answer. A run found running is not asked about again for this long, so a cancel
# from another process lands within a quarter second; a cancel sent from this process
# clears the wait and lands at the next chunk.
RECHECK_SECONDS = 0.25


class PerLoopRedisCancellationManager(RedisRunCancellationManager):
    """agno's Redis manager with one async client per event loop and throttled checks.

    An async Redis connection cannot outlive the loop that opened it, and synchronous
    callers (DRF views, commands) run each call on a fresh loop.
    """

    def __init__(self, url: str) -> None:
        super().__init__(redis_client=Redis.from_url(url), key_prefix=KEY_PREFIX)
        self._url = url
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRedis] = (
            weakref.WeakKeyDictionary()
        )
        # run id -> when Redis last said the run was still running (bounded, should agno
        # ever skip a cleanup)
        self._running_at: LRU[str, float] = LRU(10_000)

    def _ensure_async_client(self) -> AsyncRedis:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = AsyncRedis.from_url(self._url)
        return client

    def _recently_running(self, run_id: str) -> bool:
        checked = self._running_at.get(run_id)
        return checked is not None and time.monotonic() - checked < RECHECK_SECONDS

    def is_cancelled(self, run_id: str) -> bool:
        """Whether the run was cancelled, reading Redis at most every RECHECK_SECONDS."""
        if self._recently_running(run_id):
            return False
        cancelled = super().is_cancelled(run_id)
        if not cancelled:
            self._running_at.put(run_id, time.monotonic())
        return cancelled

    async def ais_cancelled(self, run_id: str) -> bool:
        """Async form of `is_cancelled`."""
        if self._recently_running(run_id):
            return False
        cancelled = await super().ais_cancelled(run_id)
        if not cancelled:
            self._running_at.put(run_id, time.monotonic())
        return cancelled

    def cancel_run(self, run_id: str) -> bool:
        """Cancel in Redis; a run of this process sees it at its next check."""
        self._running_at.pop(run_id)
        return super().cancel_run(run_id)

    async def acancel_run(self, run_id: str) -> bool:
        """Async form of `cancel_run`."""
        self._running_at.pop(run_id)
        return await super().acancel_run(run_id)

    def cleanup_run(self, run_id: str) -> None:
        """Forget a finished run here and in Redis."""
        self._running_at.pop(run_id)
        super().cleanup_run(run_id)

    async def acleanup_run(self, run_id: str) -> None:
        """Async form of `cleanup_run`."""
        self._running_at.pop(run_id)
        await super().acleanup_run(run_id)
