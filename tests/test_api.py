"""The REST API's contract: the spec's endpoints, auth, the error shape and the limits.

Every endpoint is also exercised by the parametrized tests at the end: without credentials,
with another user's ids, with unknown ids, malformed JSON, missing and wrong-typed fields.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.cache import cache
from django.db import OperationalError
from django.test import Client, override_settings
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.accounts.tokens import token_create, token_revoke
from apps.opie.agentos import runs
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import Agent, ChatSession, RunRecord
from tests import factories

API = "/api/v1/agentos/"
# The test client reads a streamed answer synchronously; uvicorn streams it (test_api_live).
pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume"),
]


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    """Users are made by the dozen here; the production hasher would dominate the run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an error of this status in the one error shape; returns its body."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"]
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    error: dict[str, Any] = body["error"]
    return error


def sse_events(response: Any) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of a streamed response read by the test client."""
    text = b"".join(response).decode()
    pairs = []
    for frame in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines())
        pairs.append((fields["event"], json.loads(fields["data"])))
    return pairs


@pytest.fixture
def helper(user: User) -> Agent:
    return factories.agent(user, agent_id="agent-123", name="Helper", tools=["calculator"])


@pytest.fixture
def foreign(other_user: User) -> dict[str, Any]:
    """Ids of rows another user owns, one of each kind."""
    agent = factories.agent(other_user, agent_id="agent-foreign")
    kb = factories.knowledge_base(other_user)
    run_id = "run-foreign"
    cache.set(runs.RUN_OWNER_KEY.format(run_id), other_user.pk)
    return {
        "agent": agent.agent_id,
        "session": factories.session(other_user, agent).session_id,
        "config": factories.model_config(other_user).pk,
        "kb": kb.pk,
        "doc": factories.document(kb).pk,
        "run": run_id,
    }


@pytest.fixture
def own(user: User, helper: Agent) -> dict[str, Any]:
    """Ids of rows the signed-in user owns, one of each kind."""
    kb = factories.knowledge_base(user)
    run_id = "run-own"
    cache.set(runs.RUN_OWNER_KEY.format(run_id), user.pk)
    return {
        "agent": helper.agent_id,
        "session": factories.session(user, helper).session_id,
        "config": factories.model_config(user).pk,
        "kb": kb.pk,
        "doc": factories.document(kb).pk,
        "run": run_id,
    }


MISSING = {
    "agent": "agent-missing",
    "session": "session-missing",
    "config": 987651,
    "kb": 987652,
    "doc": 987653,
    "run": "run-missing",
}


# The spec's curl examples, run as written.


def test_it_lists_agents_as_the_spec_curl_example(helper: Agent, token: str) -> None:
    response = Client().get(f"{API}agents/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert [a["agent_id"] for a in response.json()["results"]] == ["agent-123"]


def test_it_sends_a_message_as_the_spec_curl_example(helper: Agent, token: str) -> None:
    body = """{
    "agent_id": "agent-123",
    "message": "Hello, how can you help me?",
    "session_id": "session-456"
  }"""
    response = Client().post(
        f"{API}send-message/",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["content"] == "You said: Hello, how can you help me?"
    assert data["session_id"] == "session-456"
    assert data["agent_id"] == "agent-123"
    assert data["status"] == "succeeded"
    assert data["usage"]["total_tokens"] > 0
    assert RunRecord.objects.get(run_id=data["run_id"]).session.session_id == "session-456"


def test_it_creates_a_session_as_the_spec_curl_example(helper: Agent, token: str) -> None:
    body = """{
    "agent_id": "agent-123",
    "title": "New Chat Session"
  }"""
    response = Client().post(
        f"{API}create-session/",
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.status_code == 201, response.content
    session = ChatSession.objects.get(session_id=response.json()["session_id"])
    assert (session.title, session.agent) == ("New Chat Session", helper)


# The spec's other endpoints.


def test_it_answers_info_at_the_root_and_at_info(api: APIClient, helper: Agent) -> None:
    root = api.get(API).json()
    info = api.get(f"{API}info/").json()
    assert root["agents"] == info["agents"] == 1
    assert info["user"]["email"] == "alice@example.com"
    assert root["endpoints"]["send-message"] == "http://testserver/api/v1/agentos/send-message/"


def test_it_reports_an_unreachable_database_as_503(monkeypatch: pytest.MonkeyPatch) -> None:
    class Down:
        def cursor(self) -> None:
            raise OperationalError("connection refused")

    monkeypatch.setattr("apps.opie.api.views.connection", Down())
    error = assert_error(Client().get(f"{API}health/"), 503, "unavailable")
    assert "database" in error["message"]


def test_it_answers_health_without_a_token() -> None:
    response = Client().get(f"{API}health/", HTTP_AUTHORIZATION="Bearer not-a-token")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_it_lists_own_and_vault_agents_only(api: APIClient, helper: Agent, foreign: Any) -> None:
    vault = factories.agent(User.objects.get(email="mallory@example.com"), is_global=True)
    listed = api.get(f"{API}agents/").json()["results"]
    assert {a["agent_id"] for a in listed} == {"agent-123", vault.agent_id}
    assert {a["agent_id"]: a["editable"] for a in listed} == {
        "agent-123": True,
        vault.agent_id: False,
    }


def test_it_reports_tool_calls_in_the_answer(api: APIClient, helper: Agent) -> None:
    data = api.post(
        f"{API}send-message/", {"agent_id": "agent-123", "message": "calc: 2+3"}, format="json"
    ).json()
    assert data["content"] == "The answer is 5."
    [call] = data["tool_calls"]
    assert (call["name"], call["arguments"], call["result"]) == (
        "calculator",
        {"expression": "2+3"},
        "5",
    )


def test_it_continues_a_session(api: APIClient, helper: Agent) -> None:
    first = api.post(
        f"{API}send-message/", {"agent_id": "agent-123", "message": "my name is Ada"}, format="json"
    ).json()
    second = api.post(
        f"{API}send-message/",
        {"agent_id": "agent-123", "message": "recall", "session_id": first["session_id"]},
        format="json",
    ).json()
    assert second["session_id"] == first["session_id"]
    assert second["content"] == "Earlier you said: my name is Ada"


def test_it_reports_a_provider_failure_and_keeps_the_session(api: APIClient, helper: Agent) -> None:
    failed = api.post(
        f"{API}send-message/", {"agent_id": "agent-123", "message": "please fail"}, format="json"
    )
    assert failed.status_code == 200
    assert failed.json()["status"] == "failed"
    assert failed.json()["error"]
    again = api.post(
        f"{API}send-message/",
        {"agent_id": "agent-123", "message": "hello", "session_id": failed.json()["session_id"]},
        format="json",
    )
    assert again.json()["content"] == "You said: hello"


def test_it_streams_with_the_stream_flag(api: APIClient, helper: Agent) -> None:
    response = api.post(
        f"{API}send-message/",
        {"agent_id": "agent-123", "message": "hello", "stream": True},
        format="json",
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names == [
        "run.started",
        "assistant.delta",
        "assistant.delta",
        "assistant.delta",
        "assistant.message",
        "run.succeeded",
    ]
    deltas = [data["delta"] for name, data in events if name == "assistant.delta"]
    assert deltas == ["You", " said:", " hello"]
    assert events[-1][1]["content"] == "You said: hello"


def test_it_streams_tool_events_from_the_stream_endpoint(api: APIClient, helper: Agent) -> None:
    response = api.post(
        f"{API}send-message/stream/",
        {"agent_id": "agent-123", "message": "calc: 6*7"},
        format="json",
    )
    names = [name for name, _ in sse_events(response)]
    assert names[0] == "run.started"
    assert names.index("tool.call") < names.index("tool.result") < names.index("run.succeeded")
    assert names[-2:] == ["assistant.message", "run.succeeded"]


def test_it_streams_when_the_client_accepts_only_events(api: APIClient, helper: Agent) -> None:
    response = api.post(
        f"{API}send-message/",
        {"agent_id": "agent-123", "message": "hello"},
        format="json",
        HTTP_ACCEPT="text/event-stream",
    )
    assert [name for name, _ in sse_events(response)][-1] == "run.succeeded"


def test_it_refuses_a_stream_for_an_unknown_agent_before_streaming(api: APIClient) -> None:
    response = api.post(
        f"{API}send-message/stream/", {"agent_id": "agent-nope", "message": "hi"}, format="json"
    )
    assert_error(response, 404, "not_found")


def test_it_lists_sessions_newest_first_and_by_agent(
    api: APIClient, user: User, helper: Agent
) -> None:
    other_agent = factories.agent(user, agent_id="agent-other")
    factories.session(user, helper, title="first")
    factories.session(user, other_agent, title="second")
    titles = [s["title"] for s in api.get(f"{API}sessions/").json()["results"]]
    assert titles == ["second", "first"]
    only = api.get(f"{API}sessions/", {"agent_id": "agent-123"}).json()["results"]
    assert [s["title"] for s in only] == ["first"]


def test_it_paginates_lists(api: APIClient, user: User, helper: Agent) -> None:
    for n in range(3):
        factories.session(user, helper, title=f"s{n}")
    page = api.get(f"{API}sessions/", {"page_size": 2}).json()
    assert page["count"] == 3
    assert len(page["results"]) == 2
    assert "page=2" in page["next"]
    assert len(api.get(page["next"]).json()["results"]) == 1
    assert_error(api.get(f"{API}sessions/", {"page": 9}), 404, "not_found")


# Authentication and permissions.


def test_it_accepts_the_token_scheme(helper: Agent, token: str) -> None:
    response = Client().get(f"{API}agents/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200


@pytest.mark.parametrize("header", ["Bearer", "Basic abc", "Bearer a b", "Bearer opie_wrong"])
def test_it_refuses_a_bad_authorization_header(header: str) -> None:
    response = Client().get(f"{API}agents/", HTTP_AUTHORIZATION=header)
    assert_error(response, 401, "authentication_failed")


def test_it_refuses_a_revoked_token(user: User) -> None:
    record, raw = token_create(user=user, name="old")
    token_revoke(user=user, token_id=record.pk)
    response = Client().get(f"{API}agents/", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_error(response, 401, "authentication_failed")


def test_it_challenges_requests_without_credentials() -> None:
    response = Client().get(f"{API}agents/")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_serves_the_browser_session(web: Client, helper: Agent) -> None:
    assert web.get(f"{API}agents/").status_code == 200


def test_it_requires_csrf_for_session_writes(user: User, helper: Agent) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    body = {"agent_id": "agent-123", "title": "t"}
    refused = browser.post(f"{API}create-session/", body, content_type="application/json")
    assert_error(refused, 403, "permission_denied")
    csrf = "a" * 32
    browser.cookies["csrftoken"] = csrf
    allowed = browser.post(
        f"{API}create-session/", body, content_type="application/json", HTTP_X_CSRFTOKEN=csrf
    )
    assert allowed.status_code == 201


def test_it_requires_csrf_for_a_session_stream(user: User, helper: Agent) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    response = browser.post(
        f"{API}send-message/stream/",
        {"agent_id": "agent-123", "message": "hello"},
        content_type="application/json",
    )
    assert_error(response, 403, "permission_denied")


def test_it_forbids_publishing_a_vault_agent_without_staff_rights(api: APIClient) -> None:
    response = api.post(f"{API}agents/", {"name": "Public", "is_global": True}, format="json")
    assert_error(response, 403, "permission_denied")
    assert not Agent.objects.filter(name="Public").exists()


# Errors, limits and rate limits.


def test_it_answers_unknown_urls_with_json(api: APIClient) -> None:
    error = assert_error(api.get(f"{API}no-such-thing/"), 404, "not_found")
    assert error["details"]["path"] == "/api/v1/agentos/no-such-thing/"
    assert "slash" in assert_error(api.get(f"{API}agents"), 404)["details"]["hint"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("delete", "send-message/"), ("get", "send-message/stream/"), ("put", "agents/agent-123/")],
)
def test_it_answers_unsupported_methods_with_405(
    api: APIClient, helper: Agent, method: str, path: str
) -> None:
    assert_error(getattr(api, method)(f"{API}{path}"), 405, "method_not_allowed")


def test_it_answers_an_unacceptable_accept_header_with_406(api: APIClient) -> None:
    response = api.get(f"{API}agents/", HTTP_ACCEPT="application/xml")
    assert_error(response, 406, "not_acceptable")


def test_it_answers_an_unsupported_content_type_with_415(api: APIClient, helper: Agent) -> None:
    response = api.post(f"{API}send-message/", "agent_id=agent-123", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")


def test_it_answers_an_oversize_body_with_413(api: APIClient, helper: Agent) -> None:
    body = json.dumps({"agent_id": "agent-123", "message": "x" * 5_000})
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1_000):
        response = api.post(f"{API}send-message/", body, content_type="application/json")
    assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize("path", ["send-message/", "send-message/stream/", "process-message/"])
def test_it_refuses_an_oversize_message(api: APIClient, helper: Agent, path: str) -> None:
    body = {"agent_id": "agent-123", "participant_id": "p1", "message": "x" * 32_001}
    error = assert_error(api.post(f"{API}{path}", body, format="json"), 400, "invalid")
    assert "32000" in error["details"]["message"][0]
    assert not RunRecord.objects.exists()


def test_it_refuses_a_message_when_agents_are_disabled(api: APIClient, helper: Agent) -> None:
    with override_settings(AGENTOS_ENABLED=False):
        response = api.post(
            f"{API}send-message/", {"agent_id": "agent-123", "message": "hi"}, format="json"
        )
    assert_error(response, 503, "agents_unavailable")


@pytest.fixture
def keyless(user: User, monkeypatch: pytest.MonkeyPatch) -> Agent:
    """An agent on OpenAI whose key variable is not set on this server."""
    monkeypatch.delenv("AGENTOS_MODEL_OVERRIDE")
    monkeypatch.delenv("OPIE_TEST_MISSING_KEY", raising=False)
    config = factories.model_config(
        user, provider="openai", model_id="gpt-4o-mini", api_key_env="OPIE_TEST_MISSING_KEY"
    )
    return factories.agent(user, agent_id="agent-keyless", model_config=config)


def test_it_names_the_missing_provider_key(api: APIClient, keyless: Agent) -> None:
    body = {"agent_id": "agent-keyless", "message": "hi"}
    error = assert_error(api.post(f"{API}send-message/", body, format="json"), 503)
    assert error["code"] == "provider_unavailable"
    assert "OPIE_TEST_MISSING_KEY" in error["message"]


def test_it_ends_a_stream_with_the_provider_problem(api: APIClient, keyless: Agent) -> None:
    body = {"agent_id": "agent-keyless", "message": "hi"}
    [(name, data)] = sse_events(api.post(f"{API}send-message/stream/", body, format="json"))
    assert name == "run.failed"
    assert "OPIE_TEST_MISSING_KEY" in data["error"]


def test_it_answers_an_unexpected_failure_in_the_error_shape(
    api: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: AgentOSService) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(AgentOSService, "get_info", broken)
    error = assert_error(api.get(f"{API}info/"), 500, "server_error")
    assert "boom" not in error["message"]


@pytest.fixture
def mid_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rate windows are fixed minutes: keep a test's requests inside one of them."""
    from apps.opie.api.throttling import TokenRateThrottle

    monkeypatch.setattr(TokenRateThrottle, "timer", lambda self: 1_800_000_030.0)


@pytest.mark.usefixtures("mid_window")
def test_it_rate_limits_per_token_with_retry_after(user: User, helper: Agent) -> None:
    first = APIClient(HTTP_AUTHORIZATION=f"Bearer {token_create(user=user, name='a')[1]}")
    second = APIClient(HTTP_AUTHORIZATION=f"Bearer {token_create(user=user, name='b')[1]}")
    with override_settings(API_RATES={"api": "3/min", "messages": "60/min"}):
        statuses = [first.get(f"{API}agents/").status_code for _ in range(4)]
        limited = first.get(f"{API}agents/")
        other_token = second.get(f"{API}agents/")
    assert statuses == [200, 200, 200, 429]
    error = assert_error(limited, 429, "throttled")
    assert int(limited["Retry-After"]) == 30
    assert error["details"]["retry_after"] == int(limited["Retry-After"])
    assert other_token.status_code == 200


@pytest.mark.usefixtures("mid_window")
def test_it_gives_messages_their_own_tighter_budget(api: APIClient, helper: Agent) -> None:
    body = {"agent_id": "agent-123", "message": "hello"}
    with override_settings(API_RATES={"api": "100/min", "messages": "1/min"}):
        assert api.post(f"{API}send-message/", body, format="json").status_code == 200
        assert_error(api.post(f"{API}send-message/", body, format="json"), 429, "throttled")
        assert api.get(f"{API}agents/").status_code == 200


# Every endpoint, against every kind of bad request.

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("get", "", None),
    ("get", "info/", None),
    ("get", "agents/", None),
    ("post", "agents/", {"name": "New"}),
    ("get", "agents/{agent}/", None),
    ("patch", "agents/{agent}/", {"name": "Renamed"}),
    ("delete", "agents/{agent}/", None),
    ("get", "tools/", None),
    ("post", "send-message/", {"agent_id": "{agent}", "message": "hello"}),
    ("post", "send-message/stream/", {"agent_id": "{agent}", "message": "hello"}),
    ("post", "create-session/", {"agent_id": "{agent}", "title": "t"}),
    ("get", "sessions/", None),
    ("get", "sessions/{session}/", None),
    ("patch", "sessions/{session}/", {"title": "Renamed"}),
    ("delete", "sessions/{session}/", None),
    ("get", "sessions/{session}/export/", None),
    ("post", "runs/{run}/cancel/", None),
    ("get", "usage/", None),
    ("post", "process-message/", {"participant_id": "p1", "message": "hello"}),
    ("get", "model-configs/", None),
    ("post", "model-configs/", {"name": "Mine"}),
    ("get", "model-configs/{config}/", None),
    ("patch", "model-configs/{config}/", {"name": "Renamed"}),
    ("delete", "model-configs/{config}/", None),
    ("get", "knowledge-bases/", None),
    ("post", "knowledge-bases/", {"name": "Docs"}),
    ("get", "knowledge-bases/{kb}/", None),
    ("patch", "knowledge-bases/{kb}/", {"description": "d"}),
    ("delete", "knowledge-bases/{kb}/", None),
    ("get", "knowledge-bases/{kb}/documents/", None),
    ("post", "knowledge-bases/{kb}/documents/", {"text": "Some text."}),
    ("post", "knowledge-bases/{kb}/search/", {"query": "text"}),
    ("get", "documents/{doc}/", None),
    ("delete", "documents/{doc}/", None),
]
WITH_IDS = [e for e in ENDPOINTS if "{" in e[1] or "{agent}" in json.dumps(e[2])]
WITH_BODY = [e for e in ENDPOINTS if e[2] is not None]
PATH_IDS = [e for e in ENDPOINTS if "{" in e[1]]


def _request(
    client: Any, endpoint: tuple[str, str, dict[str, Any] | None], ids: dict[str, Any]
) -> Any:
    method, path, body = endpoint
    url = API + path.format(**ids)
    if body is None:
        return getattr(client, method)(url)
    payload = json.loads(json.dumps(body).replace('"{agent}"', json.dumps(ids["agent"])))
    return getattr(client, method)(url, payload, format="json")


def test_every_documented_endpoint_is_exercised_here() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    documented = {
        (method, path.removeprefix(API))
        for path, operations in schema["paths"].items()
        if path.startswith(API)
        for method in operations
    }
    placeholders = {"agent": "agent_id", "session": "session_id", "run": "run_id"}
    placeholders |= {"config": "id", "kb": "id", "doc": "id"}
    listed = {
        (method, path.format_map({k: "{" + v + "}" for k, v in placeholders.items()}))
        for method, path, _ in ENDPOINTS
    }
    # health/ is the one endpoint open without a token; it has its own test.
    assert documented == listed | {("get", "health/")}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e[0]} {e[1]}")
def test_it_refuses_every_endpoint_without_credentials(
    endpoint: tuple[str, str, dict[str, Any] | None],
) -> None:
    response = _request(APIClient(), endpoint, MISSING)
    assert_error(response, 401, "not_authenticated")


@pytest.mark.parametrize("endpoint", WITH_IDS, ids=lambda e: f"{e[0]} {e[1]}")
def test_it_answers_another_users_ids_exactly_like_unknown_ones(
    api: APIClient,
    own: dict[str, Any],
    foreign: dict[str, Any],
    endpoint: tuple[str, str, dict[str, Any] | None],
) -> None:
    theirs = assert_error(_request(api, endpoint, foreign), 404, "not_found")
    unknown = assert_error(_request(api, endpoint, MISSING), 404, "not_found")
    for error, ids in ((theirs, foreign), (unknown, MISSING)):
        # Longest first, so a small integer id cannot match inside a session uuid.
        for value in sorted(map(str, ids.values()), key=len, reverse=True):
            error["message"] = error["message"].replace(value, "<id>")
    assert theirs == unknown


@pytest.mark.parametrize("endpoint", PATH_IDS, ids=lambda e: f"{e[0]} {e[1]}")
def test_it_serves_every_id_endpoint_for_its_owner(
    api: APIClient, own: dict[str, Any], endpoint: tuple[str, str, dict[str, Any] | None]
) -> None:
    response = _request(api, endpoint, own)
    assert response.status_code in {200, 201, 204}, response.content


@pytest.mark.parametrize("endpoint", WITH_BODY, ids=lambda e: f"{e[0]} {e[1]}")
def test_it_refuses_malformed_json_everywhere(
    api: APIClient, own: dict[str, Any], endpoint: tuple[str, str, dict[str, Any] | None]
) -> None:
    method, path, _ = endpoint
    response = getattr(api, method)(
        API + path.format(**own), '{"agent_id": ', content_type="application/json"
    )
    assert_error(response, 400, "parse_error")


@pytest.mark.parametrize(
    ("path", "required"),
    [
        ("send-message/", {"agent_id", "message"}),
        ("send-message/stream/", {"agent_id", "message"}),
        ("create-session/", {"agent_id"}),
        ("process-message/", {"participant_id", "message"}),
        ("agents/", {"name"}),
        ("model-configs/", {"name"}),
        ("knowledge-bases/", {"name"}),
        ("knowledge-bases/{kb}/search/", {"query"}),
    ],
)
def test_it_names_missing_fields(
    api: APIClient, own: dict[str, Any], path: str, required: set[str]
) -> None:
    response = api.post(API + path.format(**own), {}, format="json")
    error = assert_error(response, 400, "invalid")
    assert set(error["details"]) == required


@pytest.mark.parametrize(
    ("method", "path", "body", "bad"),
    [
        ("post", "send-message/", {"message": ["hi"], "session_id": {}, "stream": "maybe"}, 3),
        ("post", "send-message/stream/", {"agent_id": [], "message": {}, "session_id": True}, 3),
        ("post", "create-session/", {"agent_id": {"a": 1}, "title": ["t"]}, 2),
        ("post", "process-message/", {"participant_id": [], "message": {}, "agent_id": 1}, 2),
        ("post", "agents/", {"name": 1, "tools": "calculator", "knowledge_base_ids": ["x"]}, 2),
        ("patch", "agents/{agent}/", {"is_active": "sometimes", "model_config_id": "one"}, 2),
        ("post", "model-configs/", {"name": "m", "temperature": "hot", "max_tokens": -1}, 2),
        ("patch", "model-configs/{config}/", {"provider": "skynet"}, 1),
        ("post", "knowledge-bases/", {"name": "k", "chunk_size": "big"}, 1),
        ("patch", "knowledge-bases/{kb}/", {"dimensions": [3]}, 1),
        ("patch", "sessions/{session}/", {"title": None}, 1),
        ("post", "knowledge-bases/{kb}/search/", {"query": "q", "limit": 500}, 1),
        ("post", "knowledge-bases/{kb}/documents/", {"text": ["t"]}, 1),
        ("post", "send-message/", [1, 2], 1),
    ],
)
def test_it_refuses_wrong_typed_fields(
    api: APIClient, own: dict[str, Any], method: str, path: str, body: Any, bad: int
) -> None:
    response = getattr(api, method)(API + path.format(**own), body, format="json")
    error = assert_error(response, 400, "invalid")
    assert len(error["details"]) >= bad
    assert error["message"].startswith("Invalid input.")


@pytest.mark.parametrize(
    ("path", "query"),
    [("sessions/", {"agent_id": "bad id!"}), ("usage/", {"days": "many"}), ("usage/", {"days": 0})],
)
def test_it_refuses_bad_query_parameters(api: APIClient, path: str, query: dict[str, Any]) -> None:
    assert_error(api.get(API + path, query), 400, "invalid")


@pytest.mark.parametrize("session_id", ["has space", "x" * 65, "bad/slash", "nul\x00byte"])
def test_it_refuses_malformed_session_ids(api: APIClient, helper: Agent, session_id: str) -> None:
    body = {"agent_id": "agent-123", "message": "hi", "session_id": session_id}
    error = assert_error(api.post(f"{API}send-message/", body, format="json"), 400, "invalid")
    assert "session_id" in error["details"]


def test_it_publishes_an_openapi_schema_and_interactive_docs(client: Client) -> None:
    schema = client.get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    document = json.loads(schema.content)
    assert document["openapi"].startswith("3.")
    operation = document["paths"]["/api/v1/agentos/send-message/"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert set(operation["responses"]["200"]["content"]) == {
        "application/json",
        "text/event-stream",
    }
    assert operation["responses"]["default"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert document["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()


@pytest.mark.usefixtures("mid_window")
def test_it_counts_concurrent_requests_exactly_once_each(settings: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace
    from uuid import uuid4

    from apps.opie.api.throttling import TokenRateThrottle

    settings.API_RATES = {"api": "10/min", "messages": "10/min"}
    request = SimpleNamespace(
        META={"HTTP_AUTHORIZATION": f"Bearer opie_{uuid4().hex}"},
        user=SimpleNamespace(is_authenticated=True, pk=1),
    )

    def attempt(_: int) -> bool:
        return TokenRateThrottle().allow_request(request, None)  # type: ignore[arg-type]

    with ThreadPoolExecutor(8) as pool:
        allowed = list(pool.map(attempt, range(40)))

    assert allowed.count(True) == 10
