"""The ASGI handler: each request's sync work in one thread, kept from one request to the next."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.core.signals import request_finished, request_started
from django.urls import reverse

from apps.opie.asgi import OpieASGIHandler, RequestThreads, Turnstile, _place, step_aside


async def asgi_get(handler: OpieASGIHandler, path: str) -> tuple[int, bytes]:
    """GET path through the handler as an ASGI server would; (status, body)."""
    sent: list[dict[str, Any]] = []
    asked = 0
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if asked == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()  # the client stays connected until the answer is out
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await handler(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


@pytest.fixture
def threads_seen() -> Iterator[list[threading.Thread]]:
    """The thread each request_started and request_finished signal ran on, in order."""
    seen: list[threading.Thread] = []

    def note(**kwargs: Any) -> None:
        seen.append(threading.current_thread())

    request_started.connect(note)
    request_finished.connect(note)
    yield seen
    request_started.disconnect(note)
    request_finished.disconnect(note)


def test_it_serves_a_page_and_runs_each_request_on_one_kept_thread(
    threads_seen: list[threading.Thread],
) -> None:
    handler = OpieASGIHandler()

    async def two_requests() -> list[tuple[int, bytes]]:
        return [await asgi_get(handler, reverse("login")) for _ in range(2)]

    answers = asyncio.run(two_requests())  # on its own loop, as under uvicorn

    assert [status for status, _ in answers] == [200, 200]
    assert all(b"<form" in body for _, body in answers)
    # Start and end of both requests ran on one thread: the second request reused the first's.
    assert len(threads_seen) == 4
    assert len(set(threads_seen)) == 1
    assert threads_seen[0].name.startswith("opie-request")
    assert threads_seen[0] is not threading.main_thread()


def test_it_keeps_a_bounded_number_of_idle_threads() -> None:
    threads = RequestThreads(keep=2)
    taken = [threads.take() for _ in range(3)]
    for executor in taken:
        threads.give_back(executor)

    assert len(threads.idle) == 2
    assert threads.take() is taken[1]
    # The one past the bound was shut down: it takes no more work.
    with pytest.raises(RuntimeError):
        taken[2].submit(print)


def test_it_hands_out_a_new_executor_when_none_is_idle() -> None:
    threads = RequestThreads(keep=2)

    first, second = threads.take(), threads.take()

    assert first is not second
    assert isinstance(first, ThreadPoolExecutor)


def test_a_turn_started_by_a_request_may_outlive_it() -> None:
    """A turn whose reader left still makes its sync calls after the request's context ends."""
    from asgiref.sync import ThreadSensitiveContext, sync_to_async

    from apps.opie.agentos import runs

    ran_on: list[int] = []

    async def turn(request_over: asyncio.Event) -> None:
        await request_over.wait()
        ran_on.append(await sync_to_async(threading.get_ident)())

    async def request_then_turn() -> None:
        request_over = asyncio.Event()
        async with ThreadSensitiveContext(executor=ThreadPoolExecutor(1)):
            task = runs._spawn(turn(request_over))
        request_over.set()
        await task

    asyncio.run(request_then_turn())
    assert len(ran_on) == 1
    assert ran_on[0] != threading.get_ident()


def test_the_turnstile_lets_a_few_requests_in_at_once_in_order_of_arrival() -> None:
    turnstile = Turnstile(2)
    inside: list[int] = []
    most = 0
    entered: list[int] = []

    async def request(number: int) -> None:
        nonlocal most
        place = await turnstile.enter()
        entered.append(number)
        inside.append(number)
        most = max(most, len(inside))
        await asyncio.sleep(0.01)
        inside.remove(number)
        place.leave()

    async def five_requests() -> None:
        await asyncio.gather(*(request(number) for number in range(5)))

    asyncio.run(five_requests())

    assert most == 2
    assert entered == [0, 1, 2, 3, 4]


def test_a_view_that_steps_aside_lets_the_next_request_in() -> None:
    turnstile = Turnstile(1)

    async def scenario() -> tuple[bool, bool]:
        first = await turnstile.enter()
        token = _place.set(first)
        await asyncio.to_thread(step_aside)  # from the view's thread, as a view would
        _place.reset(token)
        second = await asyncio.wait_for(turnstile.enter(), timeout=2)
        first.leave()  # the request ends: its place was already given up, not given twice
        third = asyncio.create_task(turnstile.enter())
        await asyncio.sleep(0.05)
        third_waited = not third.done()
        second.leave()
        await asyncio.wait_for(third, timeout=2)
        return third_waited, third.done()

    third_waited, third_entered = asyncio.run(scenario())

    assert third_waited
    assert third_entered


def test_a_request_waits_for_a_place_before_its_view_runs() -> None:
    handler = OpieASGIHandler()
    handler.turnstile.size = 1

    async def scenario() -> tuple[bool, int]:
        held = await handler.turnstile.enter()
        request = asyncio.create_task(asgi_get(handler, reverse("login")))
        await asyncio.sleep(0.2)
        waited = not request.done()
        held.leave()
        status, _ = await asyncio.wait_for(request, timeout=10)
        return waited, status

    waited, status = asyncio.run(scenario())

    assert waited
    assert status == 200
