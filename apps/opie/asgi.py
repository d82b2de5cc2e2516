"""Django's ASGI handler, with each request's synchronous part in one trip to a reused thread.

Stock Django serves a request's middleware in async mode: each synchronous middleware method
is its own trip to a worker thread and back (about twenty trips per request for Opie's
stack), and every request starts a thread and another one to join it when it ends. While
the event loop streams answers to many readers, it waits for each of those thread starts and
trips. Here the middleware chain and a synchronous view run as one synchronous call, as they
do under WSGI, on a thread kept from earlier requests. Async views and streamed answers still
run on the event loop; a view that streams hands back its database connection first. The
loop serves for the life of the process, so it may send short writes itself (`loopdb`).

Only a few requests run their synchronous part at once (`ASGI_SYNC_REQUESTS`); the others
wait their turn on the event loop, in order of arrival. Python runs one thread at a time:
fifty request threads taking turns at the GIL all finish late, and each turn they take is
one the event loop streaming answers must wait for. A view about to wait a long time (the
synchronous send-message view waits for a whole turn) calls `step_aside` to let the next
request in.

A project that mounts Opie's URLs behind stock Django's handler works the same, only slower.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase

from apps.opie.agentos.loopdb import loop_db

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


class Place:
    """A request's place among those running their synchronous part; left once."""

    def __init__(self, release: Callable[[], object]) -> None:
        self._release: Callable[[], object] | None = release
        self._lock = threading.Lock()

    def leave(self) -> None:
        """Give the place to the next request waiting (from any thread; again is a no-op)."""
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class Turnstile:
    """At most `size` requests in their synchronous part at once; the others wait in order."""

    def __init__(self, size: int) -> None:
        self.size = size
        # One semaphore per event loop: an asyncio primitive cannot be shared between loops.
        self._places: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    async def enter(self) -> Place:
        """Wait for a place (at once when `size` is 0: no limit)."""
        if self.size <= 0:
            return Place(lambda: None)
        loop = asyncio.get_running_loop()
        places = self._places.get(loop)
        if places is None:
            places = self._places[loop] = asyncio.Semaphore(self.size)
        await places.acquire()
        return Place(lambda: loop.call_soon_threadsafe(places.release))


# The place of the request being served, seen by its view's thread.
_place: ContextVar[Place | None] = ContextVar("opie_request_place", default=None)


def step_aside() -> None:
    """Let the next request in while this one waits a long time (from a view, in its thread)."""
    place = _place.get()
    if place is not None:
        place.leave()


class OpieASGIHandler(ASGIHandler):
    """Serves each request's sync middleware and view in a single hop to a reused thread."""

    def __init__(self) -> None:
        self.threads = RequestThreads()
        self.turnstile = Turnstile(settings.ASGI_SYNC_REQUESTS)
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        """The middleware chain built in sync mode, entered from the event loop in one hop."""
        super().load_middleware(is_async=False)
        chain = self._middleware_chain  # type: ignore[has-type]  # set by load_middleware
        self._middleware_chain = self._in_turn(sync_to_async(chain, thread_sensitive=True))

    def _in_turn(
        self, chain: Callable[[HttpRequest], Awaitable[HttpResponseBase]]
    ) -> Callable[[HttpRequest], Awaitable[HttpResponseBase]]:
        """The chain, entered once the request has a place in the turnstile."""
        turnstile = self.turnstile

        async def middleware_chain(request: HttpRequest) -> HttpResponseBase:
            place = await turnstile.enter()
            token = _place.set(place)
            try:
                return await chain(request)
            finally:
                place.leave()
                _place.reset(token)

        return middleware_chain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve one HTTP request; its thread-sensitive work all runs on one reused thread."""
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        loop_db.serve()
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
