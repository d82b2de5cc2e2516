"""The embedded AgentOS server, driven by agno's own AgentOSClient as a product user would.

One `manage.py agentos_start` subprocess serves the whole module. Its rows are committed once
(through `django_db_blocker`) and deleted at the end, so no test here may flush the database.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from agno.client import AgentOSClient
from agno.os.schema import AgentSessionDetailSchema
from agno.utils.http import aclose_default_clients
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from httpx import HTTPStatusError

from apps.accounts.models import User
from apps.accounts.tokens import token_create
from apps.opie.agentos.server import AgentOSServer, _claim_run, match_route
from apps.opie.agentos.service import AgentOSService
from apps.opie.management.commands.agentos_start import Command
from apps.opie.models import ChatSession, RunRecord
from tests import factories
from tests.conftest import ROOT, database_url


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    """Drive agno's async client on a fresh loop, closing its shared HTTP client after."""

    async def go() -> T:
        try:
            return await coro
        finally:
            await aclose_default_clients()

    return asyncio.run(go())


def status_of(coro: Coroutine[Any, Any, Any]) -> int:
    """The HTTP status an AgentOSClient call failed with (200 when it did not fail)."""
    try:
        run(coro)
    except HTTPStatusError as exc:
        return exc.response.status_code
    return 200


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def recorded(run_id: str | None) -> RunRecord:
    """The run's record, which the server writes just after it answers."""
    deadline = time.monotonic() + 10
    while (record := RunRecord.objects.filter(run_id=run_id).first()) is None:
        assert time.monotonic() < deadline, f"run {run_id} was never recorded"
        time.sleep(0.05)
    return record


@dataclass
class Turn:
    content: Any
    run_id: str
    session_id: str
    user_id: str | None


def ask(server: Server, token: str, agent_id: str, message: str, **fields: Any) -> Turn:
    """One non-streamed run through agno's client, as the token's user."""
    output = run(server.client.run_agent(agent_id, message, headers=bearer(token), **fields))
    assert output.run_id is not None
    assert output.session_id is not None
    return Turn(output.content, output.run_id, output.session_id, output.user_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def client(self) -> AgentOSClient:
        return AgentOSClient(base_url=self.url, timeout=30)


def start_server(log: Path, *args: str) -> Server:
    """`manage.py agentos_start` on a free port against the test database, once healthy."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "AGENTOS_AUTO_RELOAD": "false",
        "AGNO_TELEMETRY": "false",
        "AGENTOS_MODEL_OVERRIDE": os.environ["AGENTOS_MODEL_OVERRIDE"],
    }
    command = [sys.executable, "manage.py", "agentos_start", "--port", str(port), *args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)  # noqa: S603
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"agentos_start exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(server)
    pytest.fail(f"agentos_start did not become healthy:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@dataclass
class World:
    alice: User
    bob: User
    alice_token: str
    bob_token: str
    bob_session: str


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    with django_db_blocker.unblock():
        alice = User.objects.create_user("server-alice@example.com", "pw-for-tests-1")
        bob = User.objects.create_user("server-bob@example.com", "pw-for-tests-1")
        curator = User.objects.create_user("server-curator@example.com", "pw-for-tests-1")
        factories.agent(alice, agent_id="alice-calc", tools=["calculator"])
        factories.agent(alice, agent_id="alice-plain")
        factories.agent(bob, agent_id="bob-secret")
        factories.agent(curator, agent_id="vault-helper", is_global=True)
        bob_session = AgentOSService(bob).send_message("bob-secret", None, "hello bob")
        world = World(
            alice=alice,
            bob=bob,
            alice_token=token_create(user=alice, name="server")[1],
            bob_token=token_create(user=bob, name="server")[1],
            bob_session=bob_session["session_id"],
        )
    yield world
    with django_db_blocker.unblock():
        for session in ChatSession.objects.filter(user__in=[alice, bob]).select_related("user"):
            AgentOSService(session.user).delete_session(session.session_id)
        User.objects.filter(pk__in=[alice.pk, bob.pk, curator.pk]).delete()


@pytest.fixture(scope="module")
def server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("agentos") / "server.log")
    yield started
    stop_server(started)


@pytest.fixture
def db_access(django_db_blocker: Any) -> Iterator[None]:
    """Read what the server committed (the module's rows are not in a test transaction)."""
    with django_db_blocker.unblock():
        yield


def test_it_answers_health_without_a_token(server: Server) -> None:
    response = httpx.get(f"{server.url}/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_it_refuses_callers_without_a_valid_token(server: Server) -> None:
    assert status_of(server.client.list_agents()) == 401
    assert status_of(server.client.list_agents(headers=bearer("opie_not-a-token"))) == 401


def test_it_lists_only_the_users_agents_and_vault_agents(server: Server, world: World) -> None:
    alice_agents = run(server.client.list_agents(headers=bearer(world.alice_token)))
    bob_agents = run(server.client.list_agents(headers=bearer(world.bob_token)))
    assert {agent.id for agent in alice_agents} == {"alice-calc", "alice-plain", "vault-helper"}
    assert {agent.id for agent in bob_agents} == {"bob-secret", "vault-helper"}


def test_it_runs_an_agent_with_its_tools_in_one_shared_history(
    server: Server, world: World, db_access: None
) -> None:
    output = ask(server, world.alice_token, "alice-calc", "calc: 2+3")
    assert output.content == "The answer is 5."
    assert recorded(output.run_id).user_id == world.alice.pk
    history = AgentOSService(world.alice).get_sessions()
    assert output.session_id in [session["session_id"] for session in history]
    messages = AgentOSService(world.alice).get_session(output.session_id)["messages"]
    assert [m["content"] for m in messages] == ["calc: 2+3", "The answer is 5."]


def test_it_streams_a_run(server: Server, world: World) -> None:
    async def stream() -> list[Any]:
        events = server.client.run_agent_stream(
            "alice-plain", "hello there", headers=bearer(world.alice_token)
        )
        return [event async for event in events]

    events = run(stream())
    kinds = [event.event for event in events]
    assert kinds[0] == "RunStarted"
    assert kinds[-1] == "RunCompleted"
    deltas = [event.content for event in events if event.event == "RunContent"]
    assert len(deltas) > 1
    assert "".join(deltas) == "You said: hello there"


def test_it_lists_and_reads_the_users_sessions_only(server: Server, world: World) -> None:
    headers = bearer(world.alice_token)
    output = ask(server, world.alice_token, "alice-plain", "hello list")
    listed = run(server.client.get_sessions(headers=headers, user_id=str(world.bob.pk)))
    ids = {session.session_id for session in listed.data}
    assert output.session_id in ids
    assert world.bob_session not in ids
    detail = run(server.client.get_session(output.session_id, headers=headers))
    assert detail.user_id == str(world.alice.pk)
    assert isinstance(detail, AgentSessionDetailSchema)
    assert [m["content"] for m in detail.chat_history or [] if m["role"] == "user"] == [
        "hello list"
    ]


def test_it_lets_another_user_neither_see_nor_run_nor_read(server: Server, world: World) -> None:
    client, headers = server.client, bearer(world.bob_token)
    alice_run = ask(server, world.alice_token, "alice-plain", "hello private")
    assert status_of(client.aget_agent("alice-calc", headers=headers)) == 404
    assert status_of(client.run_agent("alice-calc", "calc: 1+1", headers=headers)) == 404
    assert status_of(client.get_session(alice_run.session_id, headers=headers)) == 404
    assert status_of(client.get_session_runs(alice_run.session_id, headers=headers)) == 404
    assert status_of(client.delete_session(alice_run.session_id, headers=headers)) == 404
    listed = run(client.get_sessions(headers=headers, user_id=str(world.alice.pk)))
    assert alice_run.session_id not in {session.session_id for session in listed.data}


def test_it_refuses_a_run_into_another_users_session(
    server: Server, world: World, db_access: None
) -> None:
    headers = bearer(world.alice_token)
    status = status_of(
        server.client.run_agent(
            "alice-plain", "hello", session_id=world.bob_session, headers=headers
        )
    )
    assert status == 404
    assert ChatSession.objects.get(session_id=world.bob_session).user == world.bob
    assert [
        m["content"] for m in AgentOSService(world.bob).get_session(world.bob_session)["messages"]
    ] == ["hello bob", "You said: hello bob"]


def test_it_refuses_a_session_of_another_agent(server: Server, world: World) -> None:
    headers = bearer(world.alice_token)
    plain = ask(server, world.alice_token, "alice-plain", "hello agent")
    status = status_of(
        server.client.run_agent(
            "alice-calc", "calc: 1+1", session_id=plain.session_id, headers=headers
        )
    )
    assert status == 400


def test_it_ignores_run_fields_outside_the_allow_list(
    server: Server, world: World, db_access: None
) -> None:
    output = ask(
        server,
        world.alice_token,
        "alice-plain",
        "hello fields",
        user_id=str(world.bob.pk),
        session_state={"injected": True},
        dependencies={"injected": True},
        knowledge_filters={"owner": world.bob.pk},
        metadata={"injected": True},
    )
    assert output.content == "You said: hello fields"
    assert output.user_id == str(world.alice.pk)
    assert recorded(output.run_id).user_id == world.alice.pk
    detail = run(server.client.get_session(output.session_id, headers=bearer(world.alice_token)))
    assert detail.user_id == str(world.alice.pk)
    assert "injected" not in (detail.session_state or {})
    assert "injected" not in (detail.metadata or {})


@pytest.mark.django_db
def test_it_rebuilds_the_run_form_from_the_allow_list(user: User) -> None:
    factories.agent(user, agent_id="form-agent")
    form = (
        b"message=hi&stream=false&user_id=1&knowledge_filters=%7B%7D&dependencies=%7B%7D"
        b"&session_state=%7B%7D&metadata=%7B%7D&version=2&background=true"
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/agents/form-agent/runs",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": form, "more_body": False}

    async def rebuilt() -> bytes:
        _, replay = await _claim_run(AgentOSService(user), "form-agent", scope, receive)
        return bytes((await replay())["body"])

    body = async_to_sync(rebuilt)().decode()
    session = ChatSession.objects.get(user=user)
    assert body == f"message=hi&stream=false&session_id={session.session_id}"


def test_it_answers_bad_input_with_4xx_never_500(server: Server, world: World) -> None:
    headers = bearer(world.alice_token)
    runs = f"{server.url}/agents/alice-plain/runs"
    with httpx.Client(headers=headers, timeout=30) as http:
        statuses = {
            "no message": http.post(runs, data={"stream": "false"}).status_code,
            "blank message": http.post(runs, data={"message": "  "}).status_code,
            "bad stream": http.post(runs, data={"message": "hi", "stream": "maybe"}).status_code,
            "bad session": http.post(runs, data={"message": "hi", "session_id": "a b"}).status_code,
            "upload": http.post(runs, data={"message": "hi"}, files={"f": b"x"}).status_code,
            "huge": http.post(runs, content=b"message=" + b"a" * 3_000_000).status_code,
            "binary": http.post(
                runs,
                content=b"message=\xff\xfe&stream=\xff",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ).status_code,
            "bad limit": http.get(f"{server.url}/sessions?limit=abc").status_code,
            "bad rename": http.post(f"{server.url}/sessions/x/rename", content=b"{").status_code,
            "unknown agent": http.get(f"{server.url}/agents/nope").status_code,
            "metrics": http.get(f"{server.url}/metrics").status_code,
            "knowledge": http.get(f"{server.url}/knowledge/config").status_code,
            "create session": http.post(f"{server.url}/sessions", json={}).status_code,
        }
    assert statuses == {
        "no message": 422,
        "blank message": 422,
        "bad stream": 422,
        "bad session": 400,
        "upload": 400,
        "huge": 413,
        "binary": 422,
        "bad limit": 422,
        "bad rename": 400,
        "unknown agent": 404,
        "metrics": 404,
        "knowledge": 404,
        "create session": 404,
    }


def test_it_scopes_memories_to_the_token_user(server: Server, world: World) -> None:
    client, alice, bob = server.client, bearer(world.alice_token), bearer(world.bob_token)
    created = run(client.create_memory("likes green tea", user_id=str(world.bob.pk), headers=alice))
    assert created.user_id == str(world.alice.pk)
    bobs = run(client.list_memories(user_id=str(world.alice.pk), headers=bob))
    assert created.memory_id not in {memory.memory_id for memory in bobs.data}
    assert status_of(client.get_memory(created.memory_id, headers=bob)) == 404
    foreign_delete = client.delete_memory(created.memory_id, user_id=str(world.bob.pk), headers=bob)
    assert status_of(foreign_delete) == 404
    assert run(client.get_memory(created.memory_id, headers=alice)).memory == "likes green tea"
    run(client.delete_memory(created.memory_id, headers=alice))
    assert status_of(client.get_memory(created.memory_id, headers=alice)) == 404


def test_it_renames_and_deletes_sessions_in_every_door(
    server: Server, world: World, db_access: None
) -> None:
    headers = bearer(world.alice_token)
    output = ask(server, world.alice_token, "alice-plain", "hello rename")
    renamed = run(server.client.rename_session(output.session_id, "Tea talk", headers=headers))
    assert renamed.session_name == "Tea talk"
    assert ChatSession.objects.get(session_id=output.session_id).title == "Tea talk"
    run(server.client.delete_session(output.session_id, headers=headers))
    assert not ChatSession.objects.filter(session_id=output.session_id).exists()
    assert status_of(server.client.get_session(output.session_id, headers=headers)) == 404


def test_it_shows_a_new_agent_without_a_restart(
    server: Server, world: World, django_db_blocker: Any
) -> None:
    headers = bearer(world.alice_token)
    run(server.client.list_agents(headers=headers))
    with django_db_blocker.unblock():
        factories.agent(world.alice, agent_id="alice-new")
    agents = run(server.client.list_agents(headers=headers))
    assert "alice-new" in {agent.id for agent in agents}


def test_it_serves_only_the_user_named_by_user_id(world: World, tmp_path: Path) -> None:
    only_alice = start_server(tmp_path / "server.log", "--user-id", str(world.alice.pk))
    try:
        agents = run(only_alice.client.list_agents(headers=bearer(world.alice_token)))
        assert "alice-calc" in {agent.id for agent in agents}
        assert status_of(only_alice.client.list_agents(headers=bearer(world.bob_token))) == 403
    finally:
        stop_server(only_alice)


def test_it_answers_503_everywhere_but_health_when_disabled() -> None:
    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=AgentOSServer())
        async with httpx.AsyncClient(transport=transport, base_url="http://agentos") as http:
            return await http.get(path)

    with override_settings(AGENTOS_ENABLED=False):
        health, agents = run(get("/health")), run(get("/agents"))
    assert health.status_code == 200
    assert agents.status_code == 503
    assert agents.json()["error"]["code"] == "agents_unavailable"


def test_it_allows_only_listed_routes() -> None:
    assert match_route("POST", "/agents/a1/runs") == ("run", ["a1"])
    assert match_route("GET", "/sessions/s1/runs") == ("forward", ["s1"])
    assert match_route("PATCH", "/sessions/s1") is None
    assert match_route("GET", "/traces") is None
    assert match_route("GET", "/agents//runs") is None


@pytest.mark.django_db
def test_it_refuses_an_unknown_user_id() -> None:
    with pytest.raises(CommandError, match="No active user with id 987654"):
        call_command("agentos_start", "--user-id", "987654")


def test_it_defaults_its_flags_to_the_settings() -> None:
    options = Command().create_parser("manage.py", "agentos_start").parse_args([])
    assert options.host == settings.AGENTOS_DEFAULT_HOST
    assert options.port == settings.AGENTOS_DEFAULT_PORT
    assert options.reload == settings.AGENTOS_AUTO_RELOAD
    assert options.user_id is None
