from __future__ import annotations

import json
import re
from collections.abc import Callable
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from apps.accounts.models import APIToken, AuditEvent, User
from apps.accounts.tokens import token_create
from apps.opie.models import Agent
from tests import factories

API = "/api/v1/agentos/"
Action = AuditEvent.Action


@pytest.fixture
def staff(make_user: Callable[..., User]) -> User:
    return make_user("root@example.com", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_web(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture(autouse=True)
def _only_this_tests_events(db: None) -> None:
    """Modules with a module-scoped world (test_server, test_isolation) leave their events
    behind on purpose, as an audit log should; this test's transaction starts without them."""
    AuditEvent.objects.all().delete()


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


def test_creating_a_token_on_the_web_page_records_one_event(web: Client, user: User) -> None:
    response = web.post("/account/tokens/", {"name": "laptop"})
    raw = re.search(r"opie_[A-Za-z0-9_-]{20,}", response.content.decode())
    assert raw is not None
    [event] = events(Action.TOKEN_CREATED)
    token = APIToken.objects.get(name="laptop")
    assert (event.actor, event.target_type, event.target_id) == (user, "apitoken", str(token.pk))
    assert event.ip_address == "127.0.0.1"
    assert event.details["name"] == "laptop"
    assert raw.group() not in json.dumps(event.details)
    assert token.key_hash not in json.dumps(event.details)


def test_the_create_api_token_command_records_one_event(user: User) -> None:
    out = StringIO()
    call_command("create_api_token", "--user", user.email, "--name", "ci", stdout=out)
    [event] = events(Action.TOKEN_CREATED)
    assert event.actor is None, "an operator's command has no user behind it"
    assert event.details["owner"] == user.email
    assert out.getvalue().strip() not in json.dumps(event.details)


def test_revoking_a_token_records_one_event(web: Client, user: User) -> None:
    token, raw = token_create(user=user, name="old")
    web.post(f"/account/tokens/{token.pk}/revoke/")
    web.post(f"/account/tokens/{token.pk}/revoke/")
    [event] = events(Action.TOKEN_REVOKED)
    assert (event.actor, event.target_id) == (user, str(token.pk))
    assert raw not in json.dumps(event.details)


def test_revoking_a_token_in_the_admin_records_an_event(admin_web: Client, user: User) -> None:
    token, raw = token_create(user=user, name="leaked")
    response = admin_web.post(
        f"/admin/accounts/apitoken/{token.pk}/change/",
        {"revoked_at_0": "2026-01-01", "revoked_at_1": "00:00:00"},
    )
    assert response.status_code == 302
    [event] = events(Action.TOKEN_REVOKED)
    assert event.actor_email == "root@example.com"
    assert raw not in json.dumps(event.details)


def test_agent_changes_through_the_api_record_events(api: APIClient, user: User) -> None:
    created = api.post(f"{API}agents/", {"name": "A", "agent_id": "agent-a1"}, format="json")
    assert created.status_code == 201
    api.patch(f"{API}agents/agent-a1/", {"instructions": "Be kind."}, format="json")
    assert api.delete(f"{API}agents/agent-a1/").status_code == 204
    [made], [changed], [deleted] = (
        events(action)
        for action in (Action.AGENT_CREATED, Action.AGENT_UPDATED, Action.AGENT_DELETED)
    )
    assert {made.target_id, changed.target_id, deleted.target_id} == {made.target_id}
    assert changed.details == {"agent_id": "agent-a1", "name": "A", "fields": ["instructions"]}
    assert deleted.details["agent_id"] == "agent-a1"
    assert {made.actor, changed.actor, deleted.actor} == {user}


def test_agent_changes_in_the_admin_record_events(admin_web: Client, staff: User) -> None:
    form = {"agent_id": "agent-x1", "owner": staff.pk, "name": "X", "tools": "[]"}
    assert admin_web.post("/admin/opie/agent/add/", form).status_code == 302
    agent = Agent.objects.get(agent_id="agent-x1")
    changed = admin_web.post(f"/admin/opie/agent/{agent.pk}/change/", {**form, "name": "Y"})
    assert changed.status_code == 302
    deleted = admin_web.post(f"/admin/opie/agent/{agent.pk}/delete/", {"post": "yes"})
    assert deleted.status_code == 302
    assert list(AuditEvent.objects.order_by("pk").values_list("action", "actor", "target_id")) == [
        (Action.AGENT_CREATED, staff.pk, str(agent.pk)),
        (Action.AGENT_UPDATED, staff.pk, str(agent.pk)),
        (Action.AGENT_DELETED, staff.pk, str(agent.pk)),
    ]


def test_the_admin_bulk_delete_records_an_event_per_agent(admin_web: Client, staff: User) -> None:
    agents = [factories.agent(staff), factories.agent(staff)]
    admin_web.post(
        "/admin/opie/agent/",
        {"action": "delete_selected", "_selected_action": [a.pk for a in agents], "post": "yes"},
    )
    assert not Agent.objects.exists()
    assert len(events(Action.AGENT_DELETED)) == 2


def test_the_admin_cannot_add_edit_or_delete_audit_events(admin_web: Client, user: User) -> None:
    token_create(user=user, name="x")
    event = AuditEvent.objects.get()
    base = "/admin/accounts/auditevent/"
    assert admin_web.get(base).status_code == 200
    assert admin_web.get(f"{base}{event.pk}/change/").status_code == 200, "viewable"
    assert admin_web.post(f"{base}{event.pk}/change/", {"action": "x"}).status_code == 403
    assert admin_web.post(f"{base}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_web.get(f"{base}add/").status_code == 403
    admin_web.post(
        base, {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    )
    assert AuditEvent.objects.get().action == Action.TOKEN_CREATED
