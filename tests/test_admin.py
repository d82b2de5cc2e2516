from __future__ import annotations

from collections.abc import Callable

import pytest
from django.core.management import call_command
from django.test import Client

from apps.accounts.models import User
from apps.opie.demo import DEMO_EMAIL
from apps.opie.models import Agent, KnowledgeBase, KnowledgeDocument, ModelConfig
from tests import factories


@pytest.fixture
def admin_client(make_user: Callable[..., User]) -> tuple[Client, User]:
    admin = make_user("root@example.com", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client, admin


def errors_of(response) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, "an invalid admin form re-renders with errors"
    return {name: list(errs) for name, errs in response.context["adminform"].form.errors.items()}


@pytest.mark.parametrize(
    "path",
    [
        "/admin/accounts/user/",
        "/admin/accounts/apitoken/",
        "/admin/opie/agent/",
        "/admin/opie/modelconfig/",
        "/admin/opie/knowledgebase/",
        "/admin/opie/knowledgedocument/",
        "/admin/opie/chatsession/",
        "/admin/opie/agent/add/",
        "/admin/opie/knowledgebase/add/",
    ],
)
def test_every_admin_page_renders(admin_client: tuple[Client, User], path: str) -> None:
    client, admin = admin_client
    factories.session(admin, factories.agent(admin))
    factories.document(factories.knowledge_base(admin))
    assert client.get(path).status_code == 200


def test_an_agent_with_unknown_tools_and_no_name_gets_field_errors(
    admin_client: tuple[Client, User],
) -> None:
    client, admin = admin_client
    response = client.post(
        "/admin/opie/agent/add/",
        {"agent_id": "Bad Id!", "owner": admin.pk, "name": "", "tools": '["rm_rf"]'},
    )
    errors = errors_of(response)
    assert {"agent_id", "name"} <= errors.keys()
    assert not Agent.objects.exists()


def test_unknown_tools_are_named_in_the_error(admin_client: tuple[Client, User]) -> None:
    client, admin = admin_client
    response = client.post(
        "/admin/opie/agent/add/",
        {"agent_id": "agent-x1", "owner": admin.pk, "name": "X", "tools": '["rm_rf"]'},
    )
    assert "Unknown tools: rm_rf" in str(errors_of(response))
    assert not Agent.objects.exists()


def test_a_model_config_needs_what_its_provider_needs(admin_client: tuple[Client, User]) -> None:
    client, admin = admin_client
    response = client.post(
        "/admin/opie/modelconfig/add/",
        {"owner": admin.pk, "name": "x", "provider": "openai_compatible", "api_key_env": "sk-1"},
    )
    errors = errors_of(response)
    assert "api_key_env" in errors
    response = client.post(
        "/admin/opie/modelconfig/add/",
        {"owner": admin.pk, "name": "x", "provider": "openai_compatible", "temperature": "5"},
    )
    errors = errors_of(response)
    assert {"base_url", "temperature"} <= errors.keys()
    assert not ModelConfig.objects.exists()


def test_a_knowledge_base_rejects_overlap_not_below_chunk_size(
    admin_client: tuple[Client, User],
) -> None:
    client, admin = admin_client
    response = client.post(
        "/admin/opie/knowledgebase/add/",
        {
            "owner": admin.pk,
            "name": "kb",
            "embedder": "local",
            "dimensions": "384",
            "chunk_size": "200",
            "chunk_overlap": "200",
            "documents-TOTAL_FORMS": "0",
            "documents-INITIAL_FORMS": "0",
        },
    )
    assert "chunk_overlap" in errors_of(response)
    assert not KnowledgeBase.objects.exists()


def test_an_agent_cannot_use_another_owners_model_config(
    admin_client: tuple[Client, User], other_user: User
) -> None:
    client, admin = admin_client
    foreign = factories.model_config(other_user)
    response = client.post(
        "/admin/opie/agent/add/",
        {
            "agent_id": "agent-x2",
            "owner": admin.pk,
            "name": "X",
            "tools": "[]",
            "model_config": foreign.pk,
            "is_active": "on",
        },
    )
    assert "model_config" in errors_of(response)


def test_the_demo_account_is_created_once(db: None) -> None:
    call_command("opie_demo")
    counts = (Agent.objects.count(), KnowledgeDocument.objects.count(), User.objects.count())
    call_command("opie_demo")
    assert (
        Agent.objects.count(),
        KnowledgeDocument.objects.count(),
        User.objects.count(),
    ) == counts
    demo = User.objects.get(email=DEMO_EMAIL)
    assert demo.check_password("opie-demo")
    assert counts[0] == 3
    assert Agent.objects.filter(owner=demo, knowledge_bases__isnull=False).count() == 1
