"""Every web page: its owner sees it, another user gets the styled 404, anonymous users log in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.opie.agentos.service import AgentOSService
from tests import factories


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    """Two users per test; the production hasher would dominate the run time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class World:
    agent_id: str
    session_id: str
    kb_id: int
    document_id: int


@pytest.fixture
def world(user: User) -> World:
    kb = factories.knowledge_base(user, name="Handbook")
    doc = factories.document(kb, title="Refund policy")
    agent = factories.agent(
        user, agent_id="agent-owned", tools=["calculator"], knowledge_bases=[kb]
    )
    session = factories.session(user, agent, title="Secret trip")
    return World("agent-owned", session.session_id, kb.pk, doc.pk)


PAGES = [
    "/agentos/chat/{agent_id}/",
    "/agentos/chat/{agent_id}/?session={session_id}",
    "/agentos/agents/{agent_id}/edit/",
    "/agentos/session/{session_id}/",
    "/agentos/session/{session_id}/export.md",
    "/agentos/session/{session_id}/export.json",
    "/agentos/knowledge/{kb_id}/",
    "/agentos/documents/{document_id}/",
]
SHARED_PAGES = ["/agentos/", "/agentos/agents/", "/agentos/agents/new/", "/agentos/knowledge/"]


def url(template: str, world: World) -> str:
    return template.format(**vars(world))


@pytest.mark.parametrize("page", PAGES + SHARED_PAGES)
def test_the_owner_sees_each_page(web: Client, world: World, page: str) -> None:
    response = web.get(url(page, world))
    assert response.status_code == 200, response.content[:500]


@pytest.mark.parametrize("page", PAGES)
def test_another_user_gets_the_styled_404(world: World, other_user: User, page: str) -> None:
    intruder = Client()
    intruder.force_login(other_user)
    response = intruder.get(url(page, world))
    assert response.status_code == 404
    body = response.content.decode()
    assert "Not found" in body
    assert "Back to the dashboard" in body
    assert "Secret trip" not in body


@pytest.mark.parametrize("page", SHARED_PAGES)
def test_another_user_sees_none_of_the_owners_rows(
    world: World, other_user: User, page: str
) -> None:
    intruder = Client()
    intruder.force_login(other_user)
    body = intruder.get(url(page, world)).content.decode()
    assert "agent-owned" not in body
    assert "Handbook" not in body


@pytest.mark.parametrize("page", PAGES + SHARED_PAGES)
def test_anonymous_users_are_sent_to_login(world: World, page: str) -> None:
    response = Client().get(url(page, world))
    assert response.status_code == 302
    assert response["Location"].startswith("/account/login/?next=/agentos/")


@pytest.mark.parametrize(
    "page",
    [
        "/agentos/chat/agent-missing/",
        "/agentos/session/no-such-session/",
        "/agentos/knowledge/999999/",
        "/agentos/agents/agent-missing/edit/",
        "/agentos/session/{session_id}/export.pdf",
    ],
)
def test_a_missing_thing_gets_the_styled_404(web: Client, world: World, page: str) -> None:
    response = web.get(url(page, world))
    assert response.status_code == 404
    assert "Back to the dashboard" in response.content.decode()


def test_the_navigation_links_every_section_and_the_token_page(web: Client) -> None:
    body = web.get("/agentos/").content.decode()
    for link in ("/agentos/", "/agentos/agents/", "/agentos/knowledge/", "/account/tokens/"):
        assert f'href="{link}"' in body


def test_the_token_page_uses_the_site_layout(web: Client) -> None:
    body = web.get("/account/tokens/").content.decode()
    assert 'href="/agentos/knowledge/"' in body
    assert "API tokens" in body


@pytest.mark.parametrize(
    ("method", "page"),
    [
        ("post", "/agentos/session/{session_id}/rename/"),
        ("post", "/agentos/session/{session_id}/delete/"),
        ("post", "/agentos/knowledge/{kb_id}/delete/"),
        ("post", "/agentos/knowledge/{kb_id}/upload/"),
        ("post", "/agentos/documents/{document_id}/delete/"),
        ("post", "/agentos/agents/{agent_id}/edit/"),
        ("post", "/agentos/agents/{agent_id}/delete/"),
        ("post", "/agentos/chat/{agent_id}/send/"),
    ],
)
def test_another_user_cannot_change_the_owners_things(
    world: World, other_user: User, method: str, page: str
) -> None:
    intruder = Client()
    intruder.force_login(other_user)
    response = getattr(intruder, method)(url(page, world), {"title": "mine", "message": "hi"})
    assert response.status_code == 404
    assert AgentOSService(world_user(world)).get_session(world.session_id)["title"] != "mine"


def world_user(world: World) -> User:
    return User.objects.get(agents__agent_id=world.agent_id)
