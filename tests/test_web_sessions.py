"""The session page: transcript, rename, delete, and export as Markdown and JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import ChatSession
from tests import factories


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def session_id(user: User) -> str:
    factories.agent(user, agent_id="agent-helper", name="Helper", tools=["calculator"])
    service = AgentOSService(user)
    first = service.send_message("agent-helper", None, "hello there")
    service.send_message("agent-helper", first["session_id"], "calc: 2+3")
    return str(first["session_id"])


def test_the_transcript_shows_every_turn_with_its_tool_steps(web: Client, session_id: str) -> None:
    page = web.get(f"/agentos/session/{session_id}/").content.decode()
    for text in ("hello there", "You said: hello there", "calc: 2+3", "The answer is 5."):
        assert text in page
    assert '<details class="step">' in page
    assert f'href="/agentos/chat/agent-helper/?session={session_id}"' in page


def test_it_renames_a_session(web: Client, session_id: str) -> None:
    response = web.post(f"/agentos/session/{session_id}/rename/", {"title": "  Maths  help "})
    assert response["Location"] == f"/agentos/session/{session_id}/"
    assert ChatSession.objects.get(session_id=session_id).title == "Maths help"
    page = web.get(response["Location"]).content.decode()
    assert "Session renamed." in page
    assert "<h1>Maths help</h1>" in page


def test_renaming_to_nothing_is_a_field_error(web: Client, session_id: str) -> None:
    response = web.post(f"/agentos/session/{session_id}/rename/", {"title": "   "})
    assert response.status_code == 400
    assert "This field is required." in response.content.decode()
    assert ChatSession.objects.get(session_id=session_id).title == "hello there"


def test_it_deletes_a_session(web: Client, session_id: str) -> None:
    response = web.post(f"/agentos/session/{session_id}/delete/", follow=True)
    assert response.redirect_chain[-1][0] == "/agentos/"
    assert "Session deleted." in response.content.decode()
    assert not ChatSession.objects.filter(session_id=session_id).exists()
    assert web.get(f"/agentos/session/{session_id}/").status_code == 404


def test_it_exports_markdown(web: Client, session_id: str) -> None:
    response = web.get(f"/agentos/session/{session_id}/export.md")
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == f'attachment; filename="session-{session_id}.md"'
    text = response.content.decode()
    assert text.startswith("# hello there\n")
    assert "## User" in text
    assert "The answer is 5." in text
    assert "Tool `calculator`" in text


def test_it_exports_json(web: Client, session_id: str) -> None:
    response = web.get(f"/agentos/session/{session_id}/export.json")
    assert response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    data = json.loads(response.content)
    assert data["session_id"] == session_id
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    [call] = data["messages"][3]["tool_calls"]
    assert (call["name"], call["arguments"], call["result"]) == (
        "calculator",
        {"expression": "2+3"},
        "5",
    )
