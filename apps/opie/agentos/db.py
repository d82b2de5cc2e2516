"""Sync work (ORM calls) from async code: on a few long-lived threads, connections handed back.

asgiref runs sync code called from a request on a thread started for that request. For the
short ORM calls made from the event loop around each turn (claiming a session, recording a
run, building an agent), that is a thread start per call that the loop waits for, and more
threads taking turns at the GIL while the loop streams every answer. Here those calls run on
a small pool of long-lived threads (`AGENTOS_SYNC_THREADS`); each takes a pooled database
connection and hands it back when it returns, so it leaves nothing on its thread.

Whole request views keep a thread of their own (`pooled=False`): the synchronous
send-message view holds its thread for a whole turn, and must not queue behind others.

`AGENTOS_SYNC_THREADS = 0` keeps asgiref's behaviour for every call, and keeps the run records
that a serving loop would send itself (`loopdb`) on the ORM. The test suite uses it: its tests
run inside one transaction on one connection, which other threads cannot see.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor | None:
    """The long-lived threads for ORM calls (None: asgiref's thread per request)."""
    global _executor
    size = settings.AGENTOS_SYNC_THREADS
    if size <= 0:
        return None
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(size, thread_name_prefix="opie-orm")
        return _executor


def release_connections() -> None:
    """Hand this thread's connections back to the pool, unless a transaction holds them."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def releasing[**P, R](func: Callable[P, R]) -> Callable[P, R]:
    """Wrap a sync function so its thread returns its connection as soon as it is done.

    Under ASGI a request's sync work runs in a thread of its own, and Django closes that
    thread's connection only when the response ends: for a streamed answer, seconds later.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        finally:
            release_connections()

    return wrapper


def threaded[**P, R](func: Callable[P, R], pooled: bool = True) -> Callable[P, Awaitable[R]]:
    """An async form of a sync function, run on a pooled thread, its connection released."""
    work = releasing(func)
    per_request = sync_to_async(work)

    @functools.wraps(func)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        executor = _pool() if pooled else None
        if executor is None:
            return await per_request(*args, **kwargs)
        return await sync_to_async(work, thread_sensitive=False, executor=executor)(*args, **kwargs)

    return call


async def in_thread[**P, R](func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a sync function (ORM work) on a pooled thread and release its connection after."""
    return await threaded(func)(*args, **kwargs)
