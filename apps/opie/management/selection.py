"""Which (user, agent) pairs a management command works on, from its --user-id/--agent-id."""

from __future__ import annotations

from django.core.management.base import CommandError

from apps.accounts.models import User
from apps.opie import selectors
from apps.opie.models import Agent


def resolve_user(user_id: int | None) -> User | None:
    """The user named by --user-id, or None when the flag is absent."""
    if user_id is None:
        return None
    try:
        return User.objects.get(pk=user_id, is_active=True)
    except User.DoesNotExist:
        raise CommandError(f"No active user with id {user_id}.") from None


def select_agents(user_id: int | None, agent_id: str | None) -> list[tuple[User, Agent]]:
    """Each selected agent with the user it runs as (its owner unless --user-id is given)."""
    user = resolve_user(user_id)
    if user is not None:
        agents = selectors.agents_for(user)
    else:
        agents = Agent.objects.filter(is_active=True).select_related("model_config", "owner")
    if agent_id is not None:
        agents = agents.filter(agent_id=agent_id)
        if not agents.exists():
            whose = f" for user {user_id}" if user is not None else ""
            raise CommandError(f"No active agent {agent_id!r}{whose}.")
    return [(user or agent.owner, agent) for agent in agents.prefetch_related("knowledge_bases")]
