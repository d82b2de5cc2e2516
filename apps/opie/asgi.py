"""Django's ASGI handler, with each request's synchronous part in one trip to a reused thread.

Stock Django serves a request's middleware in async mode: each synchronous middleware method
is its own trip to a worker thread and back (about twenty trips per request for Opie's
stack), and every request starts a thread and another one to join it when it ends. While
the event loop streams answers to many readers, it waits for each of those thread starts and
trips. Here the middleware chain and a synchronous view run as one synchronous call, as they
do under WSGI, on a thread kept from earlier requests. Async views and streamed answers still
run on the event loop; a view that streams hands back its database connection first.

A project that mounts Opie's URLs behind stock Django's handler works the same, only slower.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core.handlers.asgi import ASGIHandler

# Idle request threads kept for later requests; a burst beyond this starts (and ends) more.
IDLE_THREADS = 64


class RequestThreads:
    """Single-thread executors for requests' synchronous work, reused from one to the next."""

    def __init__(self, keep: int = IDLE_THREADS) -> None:
        self.keep = keep
        self.idle: deque[ThreadPoolExecutor] = deque()

    def take(self) -> ThreadPoolExecutor:
        """An idle executor, or a new one."""
        try:
            return self.idle.pop()
        except IndexError:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix="opie-request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        """Keep a finished request's executor for the next request, up to `keep` idle ones."""
        if len(self.idle) < self.keep:
            self.idle.append(executor)
        else:
            executor.shutdown(wait=False)


class OpieASGIHandler(ASGIHandler):
    """Serves each request's sync middleware and view in a single hop to a reused thread."""

    def __init__(self) -> None:
        self.threads = RequestThreads()
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        """The middleware chain built in sync mode, entered from the event loop in one hop."""
        super().load_middleware(is_async=False)
        chain = self._middleware_chain  # type: ignore[has-type]  # set by load_middleware
        self._middleware_chain = sync_to_async(chain, thread_sensitive=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one HTTP request; its thread-sensitive work all runs on one reused thread."""
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        executor = self.threads.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            self.threads.give_back(executor)


def get_asgi_application() -> OpieASGIHandler:
    """The ASGI application, like `django.core.asgi.get_asgi_application`."""
    import django

    django.setup(set_prefix=False)
    return OpieASGIHandler()
