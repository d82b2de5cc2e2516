"""The API's resources: agents, model configs, knowledge, sessions, runs, usage and channels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.accounts.tokens import token_create
from apps.opie.agentos import runs
from apps.opie.models import (
    Agent,
    ChannelParticipant,
    ChatSession,
    KnowledgeBase,
    KnowledgeDocument,
    ModelConfig,
    RunRecord,
)
from tests import factories
from tests.test_api import API, assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    """Users are made by the dozen here; the production hasher would dominate the run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def helper(user: User) -> Agent:
    return factories.agent(user, agent_id="agent-123", name="Helper", tools=["calculator"])


def client_for(user: User) -> APIClient:
    return APIClient(HTTP_AUTHORIZATION=f"Bearer {token_create(user=user, name='t')[1]}")


def send(api: APIClient, message: str, **extra: Any) -> dict[str, Any]:
    body = {"agent_id": "agent-123", "message": message, **extra}
    response = api.post(f"{API}send-message/", body, format="json")
    assert response.status_code == 200, response.content
    data: dict[str, Any] = response.json()
    return data


# Agents.


def test_it_creates_an_agent_with_tools_config_and_knowledge(api: APIClient, user: User) -> None:
    config = factories.model_config(user, provider="openai", model_id="gpt-4o-mini")
    kb = factories.knowledge_base(user)
    body = {
        "name": "Researcher",
        "instructions": "Cite sources.",
        "tools": ["calculator"],
        "model_config_id": config.pk,
        "knowledge_base_ids": [kb.pk],
    }
    response = api.post(f"{API}agents/", body, format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    agent = Agent.objects.get(agent_id=data["agent_id"])
    assert (agent.owner, agent.model_config, list(agent.knowledge_bases.all())) == (
        user,
        config,
        [kb],
    )
    assert data["model"] == {"provider": "openai", "model_id": "gpt-4o-mini"}
    assert data["knowledge_bases"] == [{"id": kb.pk, "name": kb.name}]
    assert (data["instructions"], data["editable"]) == ("Cite sources.", True)


def test_it_refuses_an_unknown_tool_and_a_taken_agent_id(api: APIClient, helper: Agent) -> None:
    unknown = api.post(f"{API}agents/", {"name": "A", "tools": ["rm_rf"]}, format="json")
    assert "rm_rf" in assert_error(unknown, 400, "invalid")["details"]["tools"][0]
    taken = api.post(f"{API}agents/", {"name": "B", "agent_id": "agent-123"}, format="json")
    assert "agent_id" in assert_error(taken, 400, "invalid")["details"]


def test_it_refuses_another_users_config_and_knowledge_like_missing_ones(
    api: APIClient, other_user: User
) -> None:
    config = factories.model_config(other_user)
    kb = factories.knowledge_base(other_user)
    theirs = api.post(
        f"{API}agents/",
        {"name": "A", "model_config_id": config.pk, "knowledge_base_ids": [kb.pk]},
        format="json",
    )
    assert_error(theirs, 400, "invalid")
    assert "not found" in theirs.json()["error"]["details"]["model_config_id"][0]
    missing = api.post(
        f"{API}agents/", {"name": "A", "knowledge_base_ids": [kb.pk + 1000]}, format="json"
    )
    assert "not found" in assert_error(missing, 400)["details"]["knowledge_base_ids"][0]
    assert not Agent.objects.filter(name="A").exists()


def test_it_lets_staff_publish_a_vault_agent(make_user: Any) -> None:
    staff = make_user("staff@example.com", is_staff=True)
    response = client_for(staff).post(
        f"{API}agents/", {"name": "Shared", "is_global": True}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["is_global"] is True


def test_it_updates_and_deletes_an_own_agent(api: APIClient, user: User, helper: Agent) -> None:
    factories.session(user, helper)
    changed = api.patch(
        f"{API}agents/agent-123/", {"name": "Renamed", "is_active": False}, format="json"
    )
    assert changed.status_code == 200
    assert (changed.json()["name"], changed.json()["is_active"]) == ("Renamed", False)
    # An inactive agent is still its owner's to see, though no longer offered for chat.
    assert api.get(f"{API}agents/agent-123/").status_code == 200
    assert api.get(f"{API}agents/").json()["count"] == 0
    assert api.delete(f"{API}agents/agent-123/").status_code == 204
    assert not ChatSession.objects.exists()
    assert_error(api.get(f"{API}agents/agent-123/"), 404, "not_found")


def test_it_shows_a_vault_agent_but_forbids_changing_it(api: APIClient, other_user: User) -> None:
    vault = factories.agent(other_user, is_global=True, instructions="Secret sauce.")
    shown = api.get(f"{API}agents/{vault.agent_id}/").json()
    assert (shown["editable"], shown["instructions"], shown["model_config_id"]) == (
        False,
        "",
        None,
    )
    renamed = api.patch(f"{API}agents/{vault.agent_id}/", {"name": "Mine now"}, format="json")
    assert_error(renamed, 403, "permission_denied")
    assert_error(api.delete(f"{API}agents/{vault.agent_id}/"), 403, "permission_denied")
    vault.refresh_from_db()
    assert vault.name != "Mine now"


def test_it_lists_the_registered_tools(api: APIClient) -> None:
    tools = {tool["name"]: tool["description"] for tool in api.get(f"{API}tools/").json()}
    assert "calculator" in tools
    assert tools["calculator"].startswith("Evaluate an arithmetic expression")


# Model configs.


def test_it_creates_a_model_config_without_ever_holding_a_key(api: APIClient) -> None:
    body = {
        "name": "GPT",
        "provider": "openai",
        "model_id": "gpt-4o-mini",
        "api_key_env": "OPENAI_API_KEY",
        "temperature": 0.2,
    }
    response = api.post(f"{API}model-configs/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["api_key_env"] == "OPENAI_API_KEY"
    assert not {"api_key", "key", "secret"} & set(response.json())


def test_it_refuses_a_key_pasted_where_its_variable_name_goes(api: APIClient) -> None:
    body = {"name": "Oops", "provider": "openai", "model_id": "m", "api_key_env": "sk-abc123"}
    response = api.post(f"{API}model-configs/", body, format="json")
    error = assert_error(response, 400, "invalid")
    assert "sk-abc123" not in json.dumps(error)
    assert not ModelConfig.objects.exists()


def test_it_refuses_a_provider_without_what_it_needs(api: APIClient) -> None:
    body = {"name": "Compat", "provider": "openai_compatible"}
    error = assert_error(api.post(f"{API}model-configs/", body, format="json"), 400, "invalid")
    assert "base_url" in error["details"]


def test_it_refuses_a_duplicate_config_name(api: APIClient, user: User) -> None:
    factories.model_config(user, name="Same")
    response = api.post(f"{API}model-configs/", {"name": "Same"}, format="json")
    assert_error(response, 400, "invalid")


def test_it_updates_a_model_config_and_lists_only_own(
    api: APIClient, user: User, other_user: User
) -> None:
    config = factories.model_config(user, name="Mine")
    factories.model_config(other_user, name="Theirs")
    changed = api.patch(f"{API}model-configs/{config.pk}/", {"max_tokens": 512}, format="json")
    assert changed.json()["max_tokens"] == 512
    names = [c["name"] for c in api.get(f"{API}model-configs/").json()["results"]]
    assert names == ["Mine"]


def test_it_refuses_to_delete_a_config_in_use(api: APIClient, user: User) -> None:
    config = factories.model_config(user)
    factories.agent(user, model_config=config)
    assert_error(api.delete(f"{API}model-configs/{config.pk}/"), 409, "conflict")
    assert ModelConfig.objects.filter(pk=config.pk).exists()


# Knowledge bases, documents and search.


def test_it_creates_and_lists_knowledge_bases_with_document_counts(
    api: APIClient, user: User
) -> None:
    created = api.post(f"{API}knowledge-bases/", {"name": "Handbook"}, format="json")
    assert created.status_code == 201
    kb = KnowledgeBase.objects.get(pk=created.json()["id"])
    factories.document(kb)
    [listed] = api.get(f"{API}knowledge-bases/").json()["results"]
    assert (listed["name"], listed["document_count"], listed["dimensions"]) == (
        "Handbook",
        1,
        384,
    )


def test_it_deletes_a_knowledge_base_with_its_documents_and_files(
    api: APIClient,
    user: User,
    settings: Any,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.MEDIA_ROOT = tmp_path
    kb = factories.knowledge_base(user)
    upload = SimpleUploadedFile("notes.txt", b"Opie keeps files.", "text/plain")
    api.post(f"{API}knowledge-bases/{kb.pk}/documents/", {"file": upload}, format="multipart")
    stored = Path(KnowledgeDocument.objects.get().file.path)
    assert stored.exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{API}knowledge-bases/{kb.pk}/").status_code == 204
    assert not KnowledgeDocument.objects.exists()
    assert not stored.exists()


def test_it_refuses_an_overlap_as_large_as_the_chunk(api: APIClient, user: User) -> None:
    kb = factories.knowledge_base(user)
    response = api.patch(
        f"{API}knowledge-bases/{kb.pk}/", {"chunk_size": 200, "chunk_overlap": 200}, format="json"
    )
    assert_error(response, 400, "invalid")


def test_it_uploads_a_document_as_multipart(api: APIClient, user: User) -> None:
    kb = factories.knowledge_base(user)
    upload = SimpleUploadedFile("notes.md", b"# Notes\n\nOpie streams answers.", "text/markdown")
    response = api.post(
        f"{API}knowledge-bases/{kb.pk}/documents/", {"file": upload}, format="multipart"
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["title"], data["source"], data["status"], data["progress"]) == (
        "notes.md",
        "file",
        "queued",
        0,
    )
    assert KnowledgeDocument.objects.get(pk=data["id"]).knowledge_base == kb


def test_it_adds_a_text_document_as_json(api: APIClient, user: User) -> None:
    kb = factories.knowledge_base(user)
    response = api.post(
        f"{API}knowledge-bases/{kb.pk}/documents/",
        {"title": "Policy", "text": "Refunds within 30 days."},
        format="json",
    )
    assert response.status_code == 201
    assert (response.json()["title"], response.json()["source"]) == ("Policy", "text")


def test_it_refuses_an_unsupported_upload_type(api: APIClient, user: User) -> None:
    kb = factories.knowledge_base(user)
    upload = SimpleUploadedFile("tool.exe", b"MZ\x90\x00", "application/octet-stream")
    response = api.post(
        f"{API}knowledge-bases/{kb.pk}/documents/", {"file": upload}, format="multipart"
    )
    error = assert_error(response, 415, "unsupported_media_type")
    assert ".pdf" in error["message"]
    assert not KnowledgeDocument.objects.exists()


def test_it_refuses_an_oversize_upload_with_413(api: APIClient, user: User, settings: Any) -> None:
    settings.AGENTOS_MAX_UPLOAD_BYTES = 1_000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    kb = factories.knowledge_base(user)
    upload = SimpleUploadedFile("big.txt", b"x" * 5_000, "text/plain")
    response = api.post(
        f"{API}knowledge-bases/{kb.pk}/documents/", {"file": upload}, format="multipart"
    )
    assert_error(response, 413, "request_too_large")
    assert not KnowledgeDocument.objects.exists()


def test_it_refuses_a_document_with_two_sources(api: APIClient, user: User) -> None:
    kb = factories.knowledge_base(user)
    response = api.post(
        f"{API}knowledge-bases/{kb.pk}/documents/",
        {"text": "a", "url": "https://example.com/"},
        format="json",
    )
    assert_error(response, 400, "invalid")


def test_it_reports_a_documents_status_with_progress(api: APIClient, user: User) -> None:
    kb = factories.knowledge_base(user)
    doc = factories.document(kb, status="processing", chunk_count=8, chunks_done=2)
    data = api.get(f"{API}documents/{doc.pk}/").json()
    assert (data["status"], data["progress"], data["chunks_done"], data["chunk_count"]) == (
        "processing",
        25,
        2,
        8,
    )
    listed = api.get(f"{API}knowledge-bases/{kb.pk}/documents/").json()["results"]
    assert [d["id"] for d in listed] == [doc.pk]


def test_it_deletes_a_document(api: APIClient, user: User) -> None:
    doc = factories.document(factories.knowledge_base(user))
    assert api.delete(f"{API}documents/{doc.pk}/").status_code == 204
    assert not KnowledgeDocument.objects.exists()


def test_it_searches_an_empty_knowledge_base(api: APIClient, user: User) -> None:
    kb = factories.knowledge_base(user)
    response = api.post(
        f"{API}knowledge-bases/{kb.pk}/search/", {"query": "refunds"}, format="json"
    )
    assert response.status_code == 200
    assert response.json() == []


# Sessions.


def test_it_shows_a_session_with_its_messages(api: APIClient, helper: Agent) -> None:
    first = send(api, "calc: 2+3")
    session = api.get(f"{API}sessions/{first['session_id']}/").json()
    assert session["agent_id"] == "agent-123"
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "calc: 2+3"),
        ("assistant", "The answer is 5."),
    ]
    assert session["messages"][1]["tool_calls"][0]["name"] == "calculator"


def test_it_renames_and_deletes_a_session(api: APIClient, helper: Agent) -> None:
    session_id = send(api, "hello")["session_id"]
    renamed = api.patch(f"{API}sessions/{session_id}/", {"title": "Greetings"}, format="json")
    assert renamed.json()["title"] == "Greetings"
    assert api.delete(f"{API}sessions/{session_id}/").status_code == 204
    assert_error(api.get(f"{API}sessions/{session_id}/"), 404, "not_found")
    assert not ChatSession.objects.filter(session_id=session_id).exists()


def test_it_refuses_a_blank_session_title(api: APIClient, user: User, helper: Agent) -> None:
    session = factories.session(user, helper)
    response = api.patch(f"{API}sessions/{session.session_id}/", {"title": "  "}, format="json")
    assert_error(response, 400, "invalid")


def test_it_exports_a_session_as_markdown(api: APIClient, helper: Agent) -> None:
    session_id = send(api, "calc: 2+3")["session_id"]
    response = api.get(f"{API}sessions/{session_id}/export/", {"format": "markdown"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    assert f'session-{session_id}.md"' in response["Content-Disposition"]
    text = response.content.decode()
    assert text.startswith("# calc: 2+3\n")
    assert "## Assistant" in text
    assert "The answer is 5." in text
    assert '> Tool `calculator` {"expression": "2+3"} -> 5' in text


def test_it_exports_a_session_as_json(api: APIClient, helper: Agent) -> None:
    session_id = send(api, "hello")["session_id"]
    response = api.get(f"{API}sessions/{session_id}/export/", {"format": "json"})
    assert response["Content-Disposition"].endswith('.json"')
    assert response.json()["messages"][1]["content"] == "You said: hello"


def test_it_answers_an_export_of_a_foreign_session_with_a_json_404(
    api: APIClient, other_user: User
) -> None:
    theirs = factories.session(other_user, factories.agent(other_user))
    response = api.get(f"{API}sessions/{theirs.session_id}/export/", {"format": "markdown"})
    assert_error(response, 404, "not_found")


# Runs and usage.


def test_it_reports_cancelling_a_finished_run(api: APIClient, helper: Agent) -> None:
    run_id = send(api, "hello")["run_id"]
    response = api.post(f"{API}runs/{run_id}/cancel/")
    assert response.status_code == 200
    assert response.json() == {"run_id": run_id, "cancelled": False}


def test_it_hides_another_users_run(api: APIClient, other_user: User) -> None:
    cache.set(runs.RUN_OWNER_KEY.format("run-theirs"), other_user.pk)
    assert_error(api.post(f"{API}runs/run-theirs/cancel/"), 404, "not_found")


def test_it_sums_usage_per_day_agent_and_model(
    api: APIClient, user: User, other_user: User, helper: Agent
) -> None:
    first, second = send(api, "hello"), send(api, "calc: 1+1")
    theirs = factories.agent(other_user)
    RunRecord.objects.create(
        run_id="theirs", user=other_user, agent=theirs, status="succeeded", total_tokens=999
    )
    usage = api.get(f"{API}usage/", {"days": 7}).json()
    total = first["usage"]["total_tokens"] + second["usage"]["total_tokens"]
    assert usage["totals"]["runs"] == 2
    assert usage["totals"]["total_tokens"] == total
    [day] = usage["by_day"]
    assert day["total_tokens"] == total
    [agent] = usage["by_agent"]
    assert (agent["agent_id"], agent["name"], agent["runs"]) == ("agent-123", "Helper", 2)
    [model] = usage["by_model"]
    assert (model["model"], model["total_tokens"]) == ("scripted", total)


# External channels.


def test_it_keeps_a_participant_in_one_session(api: APIClient, helper: Agent) -> None:
    body = {"participant_id": "whatsapp:42", "phone_number": "+15551234567"}
    first = api.post(f"{API}process-message/", {**body, "message": "my name is Ada"}, format="json")
    assert first.status_code == 200, first.content
    assert set(first.json()) == {"response", "state", "metadata"}
    assert first.json()["state"]["new_session"] is True
    second = api.post(f"{API}process-message/", {**body, "message": "recall"}, format="json")
    data = second.json()
    assert data["response"] == "Earlier you said: my name is Ada"
    assert data["state"]["session_id"] == first.json()["state"]["session_id"]
    assert data["state"]["new_session"] is False
    assert data["metadata"]["phone_number"] == "+15551234567"
    assert data["metadata"]["run_id"]


def test_it_gives_each_participant_their_own_session(api: APIClient, helper: Agent) -> None:
    sessions = {
        api.post(
            f"{API}process-message/", {"participant_id": p, "message": "hi"}, format="json"
        ).json()["state"]["session_id"]
        for p in ("alice", "bob")
    }
    assert len(sessions) == 2


def test_it_scopes_participants_per_user(api: APIClient, helper: Agent, other_user: User) -> None:
    factories.agent(other_user, agent_id="agent-theirs")
    mine = api.post(
        f"{API}process-message/", {"participant_id": "p1", "message": "hi"}, format="json"
    ).json()
    theirs = client_for(other_user).post(
        f"{API}process-message/", {"participant_id": "p1", "message": "hi"}, format="json"
    )
    assert theirs.json()["state"]["agent_id"] == "agent-theirs"
    assert theirs.json()["state"]["session_id"] != mine["state"]["session_id"]
    assert ChannelParticipant.objects.count() == 2


def test_it_starts_a_new_session_when_the_channel_switches_agent(
    api: APIClient, user: User, helper: Agent
) -> None:
    factories.agent(user, agent_id="agent-second")
    first = api.post(
        f"{API}process-message/", {"participant_id": "p1", "message": "hi"}, format="json"
    ).json()
    switched = api.post(
        f"{API}process-message/",
        {"participant_id": "p1", "message": "hi", "agent_id": "agent-second"},
        format="json",
    ).json()
    assert switched["state"]["agent_id"] == "agent-second"
    assert switched["state"]["new_session"] is True
    assert switched["state"]["session_id"] != first["state"]["session_id"]


def test_it_asks_for_an_agent_when_the_user_has_none(api: APIClient) -> None:
    response = api.post(
        f"{API}process-message/", {"participant_id": "p1", "message": "hi"}, format="json"
    )
    assert "agent_id" in assert_error(response, 400, "invalid")["details"]
    assert not ChatSession.objects.exists()


def test_it_refuses_another_users_agent_for_a_channel(
    api: APIClient, helper: Agent, other_user: User
) -> None:
    factories.agent(other_user, agent_id="agent-theirs")
    response = api.post(
        f"{API}process-message/",
        {"participant_id": "p1", "message": "hi", "agent_id": "agent-theirs"},
        format="json",
    )
    assert_error(response, 404, "not_found")
