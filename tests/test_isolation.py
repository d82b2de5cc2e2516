"""Isolation across every door: another user's ids and credentials read nothing and write nothing.

The routes are enumerated from the code, so a new endpoint is covered without editing this file:

- web pages and the REST API: every URL pattern `django.urls.get_resolver()` knows;
- the AgentOS server: every route agno's per-user AgentOS app declares (the server forwards the
  allow-listed ones in `server.ROUTES` and answers 404 to the rest), plus the server's own
  `/health`.

Path parameters are filled with the victim's ids through `PARAMS` (by parameter name, and for
generic names like `pk` by the resource the URL names). A parameter the table cannot fill fails
the test, so a new kind of id forces a conscious mapping instead of a silent skip.

Each route is tried with every method as the attacker (a logged-in session for web pages, a
bearer token for the REST API and the AgentOS server), with bodies naming the victim's ids. An
answer is acceptable when it is not a 5xx and none of the victim's marker strings appear in it;
the victim's rows (Django and agno storage) are snapshotted before and after and must not change.

One `manage.py agentos_start` subprocess serves the module. The rows are committed once through
`django_db_blocker` and deleted at the end, so no test here may flush the database.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.http import HttpResponseBase
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from apps.accounts.models import APIToken, AuditEvent, User
from apps.accounts.tokens import token_create
from apps.opie.agentos.config import AGNO_SCHEMA, agent_os_config
from apps.opie.agentos.server import ROUTES
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import (
    Agent,
    ChatSession,
    KnowledgeBase,
    KnowledgeDocument,
    ModelConfig,
    RunRecord,
)
from tests import factories
from tests.test_server import Server, start_server, stop_server

# Each test runs in a transaction rolled back after it (the attacker's own writes vanish); the
# marker also makes pytest-django create the test database the module fixture commits to.
pytestmark = pytest.mark.django_db

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
API_PREFIX = "api/v1/"

# Strings only the victim's rows hold; none may appear in anything the attacker receives.
MARKERS = {
    "email": "victim-zq41@example.com",
    "agent_name": "VictimAgentName-q8Zr",
    "agent_description": "victim-agent-description-w2Kp",
    "instructions": "victim-instructions-Lm4x",
    "model_config": "victim-model-config-Tt7c",
    "kb_name": "victim-kb-name-Hh3v",
    "kb_description": "victim-kb-description-Nn5b",
    "document_title": "victim-document-title-Qq9d",
    "document_text": "victim-document-text-Yy6f",
    "session_title": "victim-session-title-Pp2g",
    "second_session_title": "victim-second-session-Ww8j",
    "message": "victim-secret-message-Rr1k",
    "memory": "victim-memory-Uu3m",
    "token_name": "victim-token-name-Zz0n",
}


@dataclass
class Ids:
    """One user's ids, as the URL tables need them."""

    user: User
    token: str
    token_pk: int
    audit_pk: int
    agent: Agent
    model_config: ModelConfig
    kb: KnowledgeBase
    document: KnowledgeDocument
    session: ChatSession
    run_id: str
    memory_id: str
    stream_token: str


@dataclass
class World:
    victim: Ids
    attacker: Ids


def _make_user(email: str, tag: str, markers: dict[str, str] | None) -> Ids:
    m = markers or {key: f"{tag}-{key}" for key in MARKERS}
    user = User.objects.create_user(m["email"] if markers else email, "pw-for-tests-1")
    token, raw = token_create(user=user, name=m["token_name"])
    config = factories.model_config(user, name=m["model_config"])
    kb = factories.knowledge_base(user, name=m["kb_name"], description=m["kb_description"])
    document = factories.document(
        kb,
        title=m["document_title"],
        text=m["document_text"],
        status=KnowledgeDocument.Status.READY,
    )
    agent = factories.agent(
        user,
        agent_id=f"iso-{tag}-agent",
        name=m["agent_name"],
        description=m["agent_description"],
        instructions=m["instructions"],
        model_config=config,
        knowledge_bases=[kb],
    )
    service = AgentOSService(user)
    turn = service.send_message(agent.agent_id, None, m["message"])
    service.rename_session(turn["session_id"], m["session_title"])
    factories.session(user, agent, title=m["second_session_title"])
    memory_id = f"iso-{tag}-memory"
    from agno.db.schemas.memory import UserMemory

    agent_os_config.get_db().upsert_user_memory(
        UserMemory(memory=m["memory"], memory_id=memory_id, user_id=str(user.pk))
    )
    # A pending web stream, stashed in this user's own Django session.
    client = Client()
    client.force_login(user)
    sent = client.post(
        f"/agentos/chat/{agent.agent_id}/send/",
        {"message": m["message"], "session_id": turn["session_id"]},
        headers={"HX-Request": "true"},
    )
    stream = re.search(r"/stream/([^/\"']+)/", sent.content.decode())
    return Ids(
        user=user,
        token=raw,
        token_pk=token.pk,
        audit_pk=AuditEvent.objects.filter(target_id=str(token.pk)).values_list("pk", flat=True)[0],
        agent=agent,
        model_config=config,
        kb=kb,
        document=document,
        session=ChatSession.objects.get(session_id=turn["session_id"]),
        run_id=turn["run_id"],
        memory_id=memory_id,
        stream_token=stream.group(1) if stream else "no-stream-token",
    )


ATTACKER_EMAIL = "iso-attacker@example.com"


def _forget_users() -> None:
    """Delete both users and everything of theirs, agno's rows included (also a crashed run's)."""
    users = list(User.objects.filter(email__in=[MARKERS["email"], ATTACKER_EMAIL]))
    for session in ChatSession.objects.filter(user__in=users).select_related("user"):
        AgentOSService(session.user).delete_session(session.session_id)
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {AGNO_SCHEMA}.agno_memories WHERE user_id = ANY(%s)",  # noqa: S608
            [[str(u.pk) for u in users]],
        )
    Agent.objects.filter(owner__in=users).delete()
    User.objects.filter(pk__in=[u.pk for u in users]).delete()


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    with django_db_blocker.unblock():
        # The agno tables exist once any AgentOS storage was provisioned; make sure they do.
        agent_os_config.get_db()._get_table("memories", create_table_if_not_found=True)
        agent_os_config.get_db()._get_table("sessions", create_table_if_not_found=True)
        _forget_users()
        try:
            victim = _make_user("", "victim", MARKERS)
            attacker = _make_user(ATTACKER_EMAIL, "attacker", None)
        except BaseException:
            _forget_users()
            raise
    yield World(victim=victim, attacker=attacker)
    with django_db_blocker.unblock():
        _forget_users()


@pytest.fixture(scope="module")
def server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("isolation") / "server.log")
    yield started
    stop_server(started)


@pytest.fixture
def db_access(django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():
        yield


# ---------------------------------------------------------------------------------------------
# Parameter table: every path parameter any door declares, filled with the victim's ids.

# For generic parameter names, the resource is the URL segment just before the parameter.
RESOURCES: dict[str, Callable[[Ids], Any]] = {
    "agents": lambda v: v.agent.agent_id,
    "agent": lambda v: v.agent.pk,
    "model-configs": lambda v: v.model_config.pk,
    "modelconfig": lambda v: v.model_config.pk,
    "knowledge-bases": lambda v: v.kb.pk,
    "knowledgebase": lambda v: v.kb.pk,
    "documents": lambda v: v.document.pk,
    "knowledgedocument": lambda v: v.document.pk,
    "chatsession": lambda v: v.session.pk,
    "apitoken": lambda v: v.token_pk,
    "user": lambda v: v.user.pk,
    "auditevent": lambda v: v.audit_pk,
    # Not owned by anyone: staff-only admin pages, tried with a plausible id all the same.
    "group": lambda v: 1,
    "dbtaskresult": lambda v: "00000000-0000-0000-0000-000000000001",
    # admin/r/<content_type_id>/<object_id>/: the content type is the Agent's (see PARAMS).
    "content_type_id": lambda v: v.agent.pk,
}
GENERIC = frozenset({"pk", "object_id", "id"})

PARAMS: dict[str, Callable[[Ids], Any]] = {
    "agent_id": lambda v: v.agent.agent_id,
    "session_id": lambda v: v.session.session_id,
    "run_id": lambda v: v.run_id,
    "kb_id": lambda v: v.kb.pk,
    "config_id": lambda v: v.model_config.pk,
    "document_id": lambda v: v.document.pk,
    "token_id": lambda v: v.token_pk,
    "token": lambda v: v.stream_token,
    "fmt": lambda v: "json",
    "memory_id": lambda v: v.memory_id,
    "user_id": lambda v: v.user.pk,
    "content_type_id": lambda v: ContentType.objects.get_for_model(Agent).pk,
    "app_label": lambda v: "opie",
    # Catch-alls: a path naming the victim's agent that no other pattern serves.
    "url": lambda v: f"opie/agent/{v.agent.pk}/nothing-here",
    "path": lambda v: f"agents/{v.agent.agent_id}/history",
    # agno routes the product does not serve: the closest victim id, else a plausible one.
    "team_id": lambda v: v.agent.agent_id,
    "workflow_id": lambda v: v.agent.agent_id,
    "component_id": lambda v: v.agent.agent_id,
    "knowledge_id": lambda v: v.kb.pk,
    "content_id": lambda v: v.document.pk,
    "source_id": lambda v: v.document.pk,
    "trace_id": lambda v: v.run_id,
    "eval_run_id": lambda v: v.run_id,
    "schedule_id": lambda v: v.agent.agent_id,
    "approval_id": lambda v: v.run_id,
    "learning_id": lambda v: v.memory_id,
    "service_account_id": lambda v: v.user.pk,
    "storage_key": lambda v: f"{v.session.session_id}/file.txt",
    "db_id": lambda v: "opie",
    "message_index": lambda v: 0,
    "version": lambda v: 1,
}


def fill(name: str, route: str, ids: Ids) -> str:
    """The value of path parameter `name` of `route`; fails for a parameter nobody mapped."""
    if name in GENERIC:
        segments = route.split("/")
        at = next(i for i, seg in enumerate(segments) if re.search(rf"\W{name}\W", seg))
        # The literal segment before it, or the name of a parameter there (`content_type_id`).
        before = re.sub(r"^<(?:\w+:)?(\w+)>$", r"\1", segments[at - 1]) if at else ""
        resource = RESOURCES.get(before)
        if resource is None:
            pytest.fail(f"{route}: map the resource {before!r} of {name!r} in RESOURCES")
        return str(resource(ids))
    value = PARAMS.get(name)
    if value is None:
        pytest.fail(f"{route}: map the path parameter {name!r} in PARAMS")
    return str(value(ids))


# ---------------------------------------------------------------------------------------------
# Route enumeration.


def django_routes() -> list[str]:
    """Every URL pattern of the project, as its full route string."""

    def walk(resolver: URLResolver, prefix: str) -> Iterator[str]:
        for pattern in resolver.url_patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern)

    return list(dict.fromkeys(walk(get_resolver(), "")))


ROUTE_PARAM = re.compile(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>[^)]*\)")


def django_url(route: str, ids: Ids) -> str:
    """The route with its parameters filled in, checked to resolve to that same route."""
    url = ROUTE_PARAM.sub(lambda m: fill(m.group(1) or m.group(2), route, ids), route)
    url = "/" + url.replace("^", "").replace("$", "")
    assert resolve(url).route.replace("^", "") == route.replace("^", ""), f"{url} is not {route}"
    return url


AGNO_PARAM = re.compile(r"{(\w+)(?::\w+)?}")


def agno_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route an agno AgentOS app declares."""
    from fastapi.routing import _iter_included_route_candidates

    found: list[tuple[str, str]] = []
    for route in _iter_included_route_candidates(app.routes):
        path = getattr(route, "path", None)
        for method in sorted(getattr(route, "methods", None) or ()):
            if path and method != "HEAD":
                found.append((method, path))
    return list(dict.fromkeys(found))


def declared_agno_routes() -> list[tuple[str, str]]:
    """The routes agno's AgentOS declares, read at collection (no agents, no database use)."""
    from agno.db.postgres import PostgresDb
    from agno.os import AgentOS

    # An engine that never connects: Django's test database does not exist yet.
    db = PostgresDb(db_url="postgresql+psycopg://nobody@localhost:1/none", db_schema=AGNO_SCHEMA)
    return agno_routes(AgentOS(id="isolation", db=db, telemetry=False).get_app())


def agno_url(path: str, ids: Ids) -> str:
    return AGNO_PARAM.sub(lambda m: fill(m.group(1), path, ids), path)


# ---------------------------------------------------------------------------------------------
# Payloads, answers and snapshots.


def payload(victim: Ids, attacker: Ids, *, mixed: bool) -> dict[str, Any]:
    """A body naming the victim's ids (with the attacker's own agent when `mixed`)."""
    agent_id = attacker.agent.agent_id if mixed else victim.agent.agent_id
    return {
        "agent_id": agent_id,
        "agent": agent_id,
        "session_id": victim.session.session_id,
        "run_id": victim.run_id,
        "message": "hi",
        "stream": "false",
        "title": "attacker-title",
        "session_name": "attacker-title",
        "name": "attacker-name",
        "description": "attacker",
        "instructions": "attacker",
        "text": "attacker text",
        "source": "text",
        "query": "victim",
        "knowledge_base": victim.kb.pk,
        "knowledge_bases": [victim.kb.pk],
        "knowledge_base_ids": [victim.kb.pk],
        "model_config": victim.model_config.pk,
        "model_config_id": victim.model_config.pk,
        "document_id": victim.document.pk,
        "memory": "attacker memory",
        "memory_id": victim.memory_id,
        "user_id": str(victim.user.pk),
        "token_id": victim.token_pk,
    }


def query(victim: Ids) -> dict[str, str]:
    return {
        "agent_id": victim.agent.agent_id,
        "session_id": victim.session.session_id,
        "user_id": str(victim.user.pk),
        "knowledge_base": str(victim.kb.pk),
    }


def leaks(text: str) -> list[str]:
    return [name for name, marker in MARKERS.items() if marker in text]


def check(answers: list[tuple[str, int, str]]) -> None:
    """No 5xx and no victim marker in any (request, status, body+headers)."""
    bad = [
        f"{request} -> {status} {leaks(body) or ''} {body[:300]!r}"
        for request, status, body in answers
        if status >= 500 or leaks(body)
    ]
    assert not bad, "\n".join(bad)


async def _collect(stream: Any) -> bytes:
    return b"".join([bytes(chunk) async for chunk in stream])


def django_body(response: HttpResponseBase) -> str:
    content = getattr(response, "content", b"")
    if response.streaming:
        stream = response.streaming_content  # type: ignore[attr-defined]
        content = (
            async_to_sync(_collect)(stream) if hasattr(stream, "__aiter__") else b"".join(stream)
        )
    headers = " ".join(f"{k}: {v}" for k, v in response.headers.items())
    return content.decode(errors="replace") + headers


def snapshot(victim: Ids) -> dict[str, Any]:
    """Everything of the victim's: Django rows and agno's session and memory rows."""
    user = victim.user
    kbs = KnowledgeBase.objects.filter(owner=user)
    state: dict[str, Any] = {
        "user": list(User.objects.filter(pk=user.pk).values()),
        "agents": list(Agent.objects.filter(owner=user).order_by("pk").values()),
        "agents_on_configs": list(
            Agent.objects.filter(model_config__owner=user).order_by("pk").values("pk")
        ),
        "agent_kbs": list(
            Agent.knowledge_bases.through.objects.filter(knowledgebase__in=kbs)
            .order_by("pk")
            .values()
        ),
        "sessions": list(ChatSession.objects.filter(user=user).order_by("pk").values()),
        "kbs": list(kbs.order_by("pk").values()),
        "documents": list(
            KnowledgeDocument.objects.filter(knowledge_base__in=kbs).order_by("pk").values()
        ),
        "model_configs": list(ModelConfig.objects.filter(owner=user).order_by("pk").values()),
        "runs": list(RunRecord.objects.filter(user=user).order_by("pk").values()),
        "tokens": list(APIToken.objects.filter(user=user).order_by("pk").values()),
        "audit": list(AuditEvent.objects.filter(pk=victim.audit_pk).values()),
    }
    sessions = [s.session_id for s in ChatSession.objects.filter(user=user)]
    with connection.cursor() as cursor:
        for table in ("sessions", "runs", "memories"):
            cursor.execute(
                f"SELECT to_jsonb(t)::text FROM {AGNO_SCHEMA}.agno_{table} t "  # noqa: S608
                "WHERE t.user_id = %s OR to_jsonb(t)->>'session_id' = ANY(%s) ORDER BY 1",
                [str(user.pk), sessions],
            )
            state[f"agno_{table}"] = cursor.fetchall()
    assert state["agno_sessions"], "the victim should have agno history to protect"
    return state


# ---------------------------------------------------------------------------------------------
# Web pages and the REST API (in process).

ALL_DJANGO_ROUTES = django_routes()


def _variants(route: str, world: World) -> list[str]:
    """The URL filled with the victim's ids, and with the attacker's own agent when it has one."""
    variants = [django_url(route, world.victim)]
    if "agent_id>" in route:
        mixed = ROUTE_PARAM.sub(
            lambda m: (
                world.attacker.agent.agent_id
                if (m.group(1) or m.group(2)) == "agent_id"
                else fill(m.group(1) or m.group(2), route, world.victim)
            ),
            route,
        )
        variants.append("/" + mixed.replace("^", "").replace("$", ""))
    return variants


def _django_requests(client: Client, route: str, world: World) -> list[tuple[str, int, str]]:
    answers = []
    for url in _variants(route, world):
        for method in METHODS:
            # Bodies naming the victim's agent, then the attacker's own agent with the victim's
            # session (the classic "my agent, your history" attempt).
            for mixed in (False, True) if method in BODY_METHODS else (False,):
                body = payload(world.victim, world.attacker, mixed=mixed)
                if method == "GET":
                    response = client.get(url, query(world.victim))
                elif method == "POST" and not isinstance(client, APIClient):
                    form = {k: v for k, v in body.items() if not isinstance(v, list)}
                    response = client.post(url, form)
                else:
                    response = client.generic(
                        method, url, json.dumps(body), content_type="application/json"
                    )
                answers.append((f"{method} {url}", response.status_code, django_body(response)))
    return answers


@pytest.mark.usefixtures("db_access")
@pytest.mark.parametrize("route", ALL_DJANGO_ROUTES)
def test_it_keeps_every_django_route_from_reading_or_writing_another_users_data(
    world: World, route: str
) -> None:
    before = snapshot(world.victim)
    answers: list[tuple[str, int, str]] = []
    session_client = Client()
    session_client.force_login(world.attacker.user)
    answers += _django_requests(session_client, route, world)
    if route.startswith(API_PREFIX):
        token_client = APIClient()
        token_client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.attacker.token}")
        answers += _django_requests(token_client, route, world)
    check(answers)
    assert snapshot(world.victim) == before


def test_it_enumerates_the_web_and_api_routes() -> None:
    assert any(r.startswith("agentos/") for r in ALL_DJANGO_ROUTES)
    assert any(r.startswith("api/v1/agentos/") for r in ALL_DJANGO_ROUTES)
    assert any(r.startswith("account/") for r in ALL_DJANGO_ROUTES)


# ---------------------------------------------------------------------------------------------
# The AgentOS server (a subprocess, over HTTP).


# The server's own route, then every route agno declares (forwarded or refused by the server).
SERVER_ROUTES = [("GET", "/health"), *declared_agno_routes()]


def _template(path: str) -> str:
    return AGNO_PARAM.sub("*", path)


@pytest.mark.usefixtures("db_access")
def test_it_enumerates_every_server_route(world: World) -> None:
    declared = {(method, _template(path)) for method, path in SERVER_ROUTES}
    missing = [(method, t) for method, t, _ in ROUTES if (method, t) not in declared]
    assert not missing, f"allow-listed routes agno no longer declares: {missing}"
    # A user's own AgentOS (with agents) declares nothing the enumeration above missed.
    users_app = agent_os_config.initialize_agent_os(world.attacker.user).get_app()
    unseen = set(agno_routes(users_app)) - set(SERVER_ROUTES)
    assert not unseen, f"routes of a user's AgentOS missing from SERVER_ROUTES: {unseen}"


def _server_requests(server: Server, world: World, method: str, path: str) -> list[Any]:
    victim, attacker = world.victim, world.attacker
    urls = [agno_url(path, victim)]
    if "{agent_id}" in path:
        urls.append(agno_url(path.replace("{agent_id}", attacker.agent.agent_id), victim))
    answers = []
    headers = {"Authorization": f"Bearer {attacker.token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        for url in urls:
            for mixed in (False, True) if method in BODY_METHODS else (False,):
                body = payload(victim, attacker, mixed=mixed)
                if method == "GET":
                    response = client.get(url, params=query(victim))
                elif method == "POST" and path.endswith("/runs"):
                    form = {k: v for k, v in body.items() if isinstance(v, str)}
                    response = client.post(url, data=form, params=query(victim))
                else:
                    response = client.request(method, url, json=body, params=query(victim))
                text = response.text + " ".join(f"{k}: {v}" for k, v in response.headers.items())
                answers.append((f"{method} {url}", response.status_code, text))
    return answers


@pytest.mark.usefixtures("db_access")
@pytest.mark.parametrize(
    ("method", "path"), SERVER_ROUTES, ids=[f"{m} {p}" for m, p in SERVER_ROUTES]
)
def test_it_keeps_every_server_route_from_reading_or_writing_another_users_data(
    server: Server, world: World, method: str, path: str
) -> None:
    before = snapshot(world.victim)
    check(_server_requests(server, world, method, path))
    assert snapshot(world.victim) == before, f"{method} {path} changed the victim's rows"


def test_it_lets_each_user_reach_their_own_data_through_the_same_doors(
    server: Server, world: World
) -> None:
    """The probes above prove nothing if the doors refuse everyone: owners still get in."""
    attacker_title = "attacker-session_title"
    for ids, title in ((world.victim, MARKERS["session_title"]), (world.attacker, attacker_title)):
        headers = {"Authorization": f"Bearer {ids.token}"}
        response = httpx.get(f"{server.url}/sessions", headers=headers, timeout=30)
        assert response.status_code == 200
        assert title in response.text
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {ids.token}")
        assert title in api.get("/api/v1/agentos/sessions/").content.decode()
        client = Client()
        client.force_login(ids.user)
        assert title in client.get(f"/agentos/session/{ids.session.session_id}/").content.decode()
