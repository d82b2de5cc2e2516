"""Every read of user data goes through a function here that takes the user.

A row the user may not see is answered exactly like a missing one: `DoesNotExist`.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q, QuerySet

from apps.accounts.models import User
from apps.opie.models import Agent, ChatSession, KnowledgeBase, KnowledgeDocument, ModelConfig


def agents_for(user: User) -> QuerySet[Agent]:
    """Active agents the user may chat with: their own, plus vault agents when enabled."""
    visible = Q(owner=user)
    if settings.AGENTOS_INCLUDE_VAULT_AGENTS:
        visible |= Q(is_global=True)
    return Agent.objects.filter(visible, is_active=True).select_related("model_config")


def agent_for(user: User, agent_id: str) -> Agent:
    """One agent the user may chat with, by public id."""
    return agents_for(user).get(agent_id=agent_id)


def owned_agents(user: User) -> QuerySet[Agent]:
    """Agents the user owns and may edit, active or not."""
    return Agent.objects.filter(owner=user).select_related("model_config")


def model_configs_for(user: User) -> QuerySet[ModelConfig]:
    """The user's model configs."""
    return ModelConfig.objects.filter(owner=user)


def knowledge_bases_for(user: User) -> QuerySet[KnowledgeBase]:
    """The user's knowledge bases."""
    return KnowledgeBase.objects.filter(owner=user)


def documents_for(user: User) -> QuerySet[KnowledgeDocument]:
    """Documents of the user's knowledge bases."""
    return KnowledgeDocument.objects.filter(knowledge_base__owner=user).select_related(
        "knowledge_base"
    )


def sessions_for(user: User, agent_id: str | None = None) -> QuerySet[ChatSession]:
    """The user's chat sessions, newest first, optionally with one agent."""
    sessions = ChatSession.objects.filter(user=user).select_related("agent")
    if agent_id is not None:
        sessions = sessions.filter(agent__agent_id=agent_id)
    return sessions


def session_for(user: User, session_id: str) -> ChatSession:
    """One of the user's chat sessions."""
    return sessions_for(user).get(session_id=session_id)
