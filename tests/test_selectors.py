from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db.models import QuerySet
from django.test import override_settings

from apps.accounts.models import User
from apps.opie import selectors
from apps.opie.models import Agent, ChatSession
from tests import factories


@pytest.fixture
def two_tenants(user: User, other_user: User) -> dict[str, dict[str, object]]:
    rows: dict[str, dict[str, object]] = {}
    for owner in (user, other_user):
        kb = factories.knowledge_base(owner)
        agent = factories.agent(owner, knowledge_bases=[kb])
        rows[owner.email] = {
            "config": factories.model_config(owner),
            "kb": kb,
            "doc": factories.document(kb),
            "agent": agent,
            "session": factories.session(owner, agent),
        }
    return rows


@pytest.mark.parametrize(
    ("selector", "key"),
    [
        (selectors.agents_for, "agent"),
        (selectors.owned_agents, "agent"),
        (selectors.model_configs_for, "config"),
        (selectors.knowledge_bases_for, "kb"),
        (selectors.documents_for, "doc"),
        (selectors.sessions_for, "session"),
    ],
)
def test_it_never_returns_another_users_rows(
    two_tenants: dict[str, dict[str, object]],
    user: User,
    other_user: User,
    selector: Callable[[User], QuerySet[Any]],
    key: str,
) -> None:
    for me, them in ((user, other_user), (other_user, user)):
        assert list(selector(me)) == [two_tenants[me.email][key]]
        assert two_tenants[them.email][key] not in selector(me)


def test_a_foreign_agent_is_answered_like_a_missing_one(
    two_tenants: dict[str, dict[str, object]], user: User, other_user: User
) -> None:
    foreign = two_tenants[other_user.email]["agent"]
    assert isinstance(foreign, Agent)
    with pytest.raises(Agent.DoesNotExist):
        selectors.agent_for(user, foreign.agent_id)
    with pytest.raises(Agent.DoesNotExist):
        selectors.agent_for(user, "agent-does-not-exist")


def test_a_foreign_session_is_answered_like_a_missing_one(
    two_tenants: dict[str, dict[str, object]], user: User, other_user: User
) -> None:
    foreign = two_tenants[other_user.email]["session"]
    assert isinstance(foreign, ChatSession)
    with pytest.raises(ChatSession.DoesNotExist):
        selectors.session_for(user, foreign.session_id)


def test_vault_agents_are_visible_to_everyone_when_enabled(user: User, other_user: User) -> None:
    vault = factories.agent(other_user, is_global=True)
    with override_settings(AGENTOS_INCLUDE_VAULT_AGENTS=True):
        assert vault in selectors.agents_for(user)
        assert selectors.agent_for(user, vault.agent_id) == vault
    assert vault not in selectors.owned_agents(user)


def test_vault_agents_are_hidden_when_disabled(user: User, other_user: User) -> None:
    vault = factories.agent(other_user, is_global=True)
    with override_settings(AGENTOS_INCLUDE_VAULT_AGENTS=False):
        assert vault not in selectors.agents_for(user)
        assert vault in selectors.agents_for(other_user)


def test_inactive_agents_cannot_be_chatted_with_but_stay_editable(user: User) -> None:
    idle = factories.agent(user, is_active=False)
    assert idle not in selectors.agents_for(user)
    assert idle in selectors.owned_agents(user)
