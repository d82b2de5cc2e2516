"""The API served by uvicorn, as in production: incremental SSE, disconnects, cancel, curl.

One uvicorn process serves the module against the test database; its scripted model takes
0.3 s to the first token and 0.1 s per further token, so an 8-word answer takes ~1 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.db import connection

from apps.accounts.models import User
from apps.accounts.tokens import token_create
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import RunRecord
from tests import factories
from tests.conftest import database_url, uvicorn_serving

API = "/api/v1/agentos/"
ANSWER_WORDS = 8
FIRST_TOKEN_DELAY = 0.3
TOKEN_DELAY = 0.1

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def server(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Base URL of `uvicorn settings.asgi:application` on a free port."""
    with django_db_blocker.unblock():
        db_url = database_url()
    env = {
        "DATABASE_URL": db_url,
        "FAKE_MODEL_FIRST_TOKEN_DELAY": str(FIRST_TOKEN_DELAY),
        "FAKE_MODEL_TOKEN_DELAY": str(TOKEN_DELAY),
        "FAKE_MODEL_ANSWER_TOKENS": str(ANSWER_WORDS),
    }
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    with uvicorn_serving(env, log, never_logged=()) as url:
        yield url


@pytest.fixture
def account(user: User) -> Iterator[tuple[User, dict[str, str]]]:
    factories.agent(user, agent_id="agent-123", tools=["calculator"])
    yield user, {"Authorization": f"Bearer {token_create(user=user, name='live')[1]}"}
    _wait_until_server_settles()


def _wait_until_server_settles() -> None:
    """Let the server finish recording its turns before the test database is flushed.

    A turn's bookkeeping runs just after its last event; flushing the tables under it can
    deadlock, which would leave this test's rows behind for the next one.
    """
    idle_checks, deadline = 0, time.monotonic() + 10
    time.sleep(0.2)
    while idle_checks < 3 and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state <> 'idle'"
            )
            busy = cursor.fetchone()[0]
        idle_checks = idle_checks + 1 if busy == 0 else 0
        time.sleep(0.1)


def iter_sse(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any], float]]:
    """(event, data, arrival time) for each event, as soon as its frame is complete."""
    name, data = "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line and name:
            yield name, json.loads(data), time.monotonic()
            name, data = "", ""


def test_it_streams_each_delta_as_the_model_produces_it(
    server: str, account: tuple[User, dict[str, str]]
) -> None:
    _, headers = account
    body = {"agent_id": "agent-123", "message": "hello"}
    with httpx.stream(
        "POST", f"{server}{API}send-message/stream/", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = list(iter_sse(response))
    names = [name for name, _, _ in events]
    assert names == [
        "run.started",
        *["assistant.delta"] * ANSWER_WORDS,
        "assistant.message",
        "run.succeeded",
    ]
    deltas = [data["delta"] for name, data, _ in events if name == "assistant.delta"]
    assert "".join(deltas) == events[-1][1]["content"]
    first_delta = next(at for name, _, at in events if name == "assistant.delta")
    finished = events[-1][2]
    # The model spends 7 x 0.1 s after its first token: a buffered answer would arrive at once.
    assert finished - first_delta >= 0.5
    arrivals = [at for name, _, at in events if name == "assistant.delta"]
    assert arrivals[-1] - arrivals[0] >= 0.5


def test_it_streams_with_the_stream_flag_on_send_message(
    server: str, account: tuple[User, dict[str, str]]
) -> None:
    _, headers = account
    body = {"agent_id": "agent-123", "message": "hello", "stream": True}
    with httpx.stream(
        "POST", f"{server}{API}send-message/", json=body, headers=headers, timeout=30
    ) as response:
        events = list(iter_sse(response))
    assert events[0][0] == "run.started"
    assert events[-1][0] == "run.succeeded"
    assert events[-1][2] - events[1][2] >= 0.5


def test_it_finishes_and_keeps_the_turn_when_the_reader_disconnects(
    server: str, account: tuple[User, dict[str, str]]
) -> None:
    user, headers = account
    body = {"agent_id": "agent-123", "message": "hello"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{server}{API}send-message/stream/", json=body, headers=headers
        ) as response,
    ):
        name, data, _ = next(iter_sse(response))
    assert name == "run.started"
    left_at = time.monotonic()
    deadline = left_at + 15
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        messages = AgentOSService(user).get_session(data["session_id"])["messages"]
        answered = any(m["role"] == "assistant" and m["content"] for m in messages)
        # Usage is recorded just after the answer is stored.
        if answered and RunRecord.objects.filter(run_id=data["run_id"]).exists():
            break
        time.sleep(0.1)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"].startswith("You said: hello")
    assert len(messages[1]["content"].split()) == ANSWER_WORDS
    # The answer was still being written when the reader left.
    assert time.monotonic() - left_at >= 0.3
    assert RunRecord.objects.get(run_id=data["run_id"]).status == "succeeded"


def test_it_cancels_a_running_turn(server: str, account: tuple[User, dict[str, str]]) -> None:
    _, headers = account
    # 30 words at 0.1 s each: seconds of margin for the cancel request to land.
    words = [f"word{n}" for n in range(30)]
    body = {"agent_id": "agent-123", "message": "script: " + " ".join(words)}
    with httpx.stream(
        "POST", f"{server}{API}send-message/stream/", json=body, headers=headers, timeout=30
    ) as response:
        events = iter_sse(response)
        run_id = next(events)[1]["run_id"]
        assert next(events)[0] == "assistant.delta"
        cancel = httpx.post(f"{server}{API}runs/{run_id}/cancel/", headers=headers, timeout=10)
        rest = [name for name, _, _ in events]
    assert cancel.json() == {"run_id": run_id, "cancelled": True}
    assert rest[-1] == "run.cancelled"
    assert "run.succeeded" not in rest
    assert rest.count("assistant.delta") < len(words) - 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_it_answers_the_spec_curl_examples_as_written(
    server: str, account: tuple[User, dict[str, str]]
) -> None:
    _, headers = account
    token = headers["Authorization"].removeprefix("Bearer ")
    base = server + "/api/v1/agentos/"

    def curl(*args: str) -> tuple[int, Any]:
        command = ["curl", "-s", "-w", "\n%{http_code}", *args]
        output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=30)  # noqa: S603
        body, _, status = output.stdout.rpartition("\n")
        return int(status), json.loads(body)

    auth = f"Authorization: Bearer {token}"
    status, agents = curl("-X", "GET", base + "agents/", "-H", auth)
    assert status == 200
    assert [agent["agent_id"] for agent in agents["results"]] == ["agent-123"]
    status, answer = curl(
        *("-X", "POST", base + "send-message/"),
        *("-H", "Content-Type: application/json", "-H", auth),
        "-d",
        """{
    "agent_id": "agent-123",
    "message": "Hello, how can you help me?",
    "session_id": "session-456"
  }""",
    )
    assert status == 200
    assert (answer["session_id"], answer["status"]) == ("session-456", "succeeded")
    assert answer["content"].startswith("You said: Hello,")
    status, session = curl(
        *("-X", "POST", base + "create-session/"),
        *("-H", "Content-Type: application/json", "-H", auth),
        "-d",
        """{
    "agent_id": "agent-123",
    "title": "New Chat Session"
  }""",
    )
    assert status == 201
    assert session["title"] == "New Chat Session"
