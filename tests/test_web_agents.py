"""Agent pages: the list with capabilities and performance, create and edit with field errors."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.opie.models import Agent, ChatSession, RunRecord
from tests import factories


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def form_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "Support",
        "agent_id": "",
        "description": "Answers customers",
        "instructions": "Be kind.",
        "model_config": "",
        "tools": ["calculator"],
        "is_active": "on",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def test_it_creates_an_agent_with_tools_and_knowledge(web: Client, user: User) -> None:
    kb = factories.knowledge_base(user, name="Handbook")
    config = factories.model_config(user, name="fast", provider="openai", model_id="gpt-x")
    response = web.post(
        "/agentos/agents/new/",
        form_data(agent_id="agent-support", knowledge_bases=[kb.pk], model_config=config.pk),
    )
    assert response["Location"] == "/agentos/agents/"
    agent = Agent.objects.get(agent_id="agent-support")
    assert (agent.owner, agent.name, agent.tools, agent.model_config) == (
        user,
        "Support",
        ["calculator"],
        config,
    )
    assert list(agent.knowledge_bases.all()) == [kb]
    page = web.get("/agentos/agents/").content.decode()
    assert "Agent “Support” created." in page
    assert "OpenAI: gpt-x" in page
    assert "search_knowledge" in page


def test_a_generated_id_is_used_when_none_is_given(web: Client, user: User) -> None:
    web.post("/agentos/agents/new/", form_data())
    assert Agent.objects.get(owner=user).agent_id.startswith("agent-")


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"name": ""}, "name", "This field is required."),
        ({"agent_id": "Bad Id!"}, "agent_id", "lowercase letters"),
        ({"tools": ["rm_rf"]}, "tools", "Select a valid choice"),
        ({"model_config": "999999"}, "model_config", "Select a valid choice"),
        ({"knowledge_bases": ["999999"]}, "knowledge_bases", "Select a valid choice"),
    ],
)
def test_it_shows_field_errors_and_creates_nothing(
    web: Client, overrides: dict[str, Any], field: str, message: str
) -> None:
    response = web.post("/agentos/agents/new/", form_data(**overrides))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert "Please correct the fields marked below." in response.content.decode()
    assert not Agent.objects.exists()


def test_another_users_knowledge_base_cannot_be_attached(web: Client, other_user: User) -> None:
    theirs = factories.knowledge_base(other_user, name="Theirs")
    response = web.post("/agentos/agents/new/", form_data(knowledge_bases=[theirs.pk]))
    assert response.status_code == 400
    assert "knowledge_bases" in response.context["form"].errors
    assert "Theirs" not in response.content.decode()


def test_a_taken_agent_id_is_a_field_error(web: Client, other_user: User) -> None:
    factories.agent(other_user, agent_id="agent-taken")
    response = web.post("/agentos/agents/new/", form_data(agent_id="agent-taken"))
    assert response.status_code == 400
    assert "agent_id" in response.context["form"].errors


def test_it_edits_an_agent(web: Client, user: User) -> None:
    agent = factories.agent(user, agent_id="agent-edit", name="Old", tools=["calculator"])
    page = web.get("/agentos/agents/agent-edit/edit/").content.decode()
    assert 'value="Old"' in page
    assert re.search(r'value="calculator"[^>]*checked', page)
    assert not re.search(r'value="current_datetime"[^>]*checked', page)
    response = web.post(
        "/agentos/agents/agent-edit/edit/",
        form_data(name="New", tools=["current_datetime"], is_active=None, agent_id=None),
    )
    assert response["Location"] == "/agentos/agents/"
    agent.refresh_from_db()
    assert (agent.name, agent.tools, agent.is_active, agent.agent_id) == (
        "New",
        ["current_datetime"],
        False,
        "agent-edit",
    )


def test_editing_shows_field_errors(web: Client, user: User) -> None:
    factories.agent(user, agent_id="agent-edit", name="Old")
    response = web.post("/agentos/agents/agent-edit/edit/", form_data(name=""))
    assert response.status_code == 400
    assert "name" in response.context["form"].errors
    assert Agent.objects.get().name == "Old"


def test_it_deletes_an_agent_with_its_sessions(web: Client, user: User) -> None:
    agent = factories.agent(user, agent_id="agent-gone")
    factories.session(user, agent)
    response = web.post("/agentos/agents/agent-gone/delete/", follow=True)
    assert "deleted" in response.content.decode()
    assert not Agent.objects.exists()
    assert not ChatSession.objects.exists()


def test_the_list_shows_capabilities_and_performance(web: Client, user: User) -> None:
    agent = factories.agent(user, agent_id="agent-busy", tools=["calculator"])
    for number, (status, duration, tokens) in enumerate(
        [("succeeded", 100, 10), ("succeeded", 300, 20), ("succeeded", 900, 30), ("failed", 9, 0)]
    ):
        RunRecord.objects.create(
            run_id=f"run-{number}",
            user=user,
            agent=agent,
            status=status,
            duration_ms=duration,
            total_tokens=tokens,
        )
    row = next(r for r in web.get("/agentos/agents/").context["rows"] if r["agent"] == agent)
    assert row["stats"] == {"runs": 4, "failed": 1, "median_ms": 300.0, "tokens": 60}
    page = web.get("/agentos/agents/").content.decode()
    assert "300 ms" in page
    assert "(1 failed)" in page
    assert "Evaluate an arithmetic expression" in page


def test_performance_counts_only_the_users_own_runs(
    web: Client, user: User, other_user: User
) -> None:
    vault = factories.agent(other_user, agent_id="agent-vault", is_global=True)
    RunRecord.objects.create(
        run_id="theirs", user=other_user, agent=vault, status="succeeded", total_tokens=999
    )
    rows = web.get("/agentos/agents/").context["rows"]
    [row] = [r for r in rows if r["agent"] == vault]
    assert row["stats"] is None
    assert row["editable"] is False
    assert "/agentos/agents/agent-vault/edit/" not in web.get("/agentos/agents/").content.decode()


def test_a_vault_agent_cannot_be_edited_by_others(web: Client, other_user: User) -> None:
    factories.agent(other_user, agent_id="agent-vault", is_global=True)
    assert web.get("/agentos/agents/agent-vault/edit/").status_code == 404
    assert web.post("/agentos/agents/agent-vault/delete/").status_code == 404
    assert Agent.objects.filter(agent_id="agent-vault").exists()
