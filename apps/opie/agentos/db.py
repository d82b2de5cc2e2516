"""Database access from async code without holding pooled connections across awaits."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from django.db import connections


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


def threaded[**P, R](func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """An async form of a sync function (ORM work) that releases its connection after."""
    return sync_to_async(releasing(func))


async def in_thread[**P, R](func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a sync function (ORM work) in a thread and release its connection afterwards."""
    result: R = await threaded(func)(*args, **kwargs)
    return result
