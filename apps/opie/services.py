"""Writes of agents, model configs and knowledge bases, shared by the web pages and the API.

Each takes the acting user and reads through the selectors, so a foreign id is a NotFound
exactly like a missing one. Rows are validated by the model (`full_clean`) before saving.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from apps.accounts.audit import audit_record
from apps.accounts.models import AuditEvent, User
from apps.opie import selectors
from apps.opie.agentos.knowledge import drop_orphan_tables
from apps.opie.agentos.service import NotFound
from apps.opie.models import Agent, KnowledgeBase, ModelConfig

AGENT_FIELDS = ("name", "description", "instructions", "tools", "is_active", "is_global")


def visible_agent(*, user: User, agent_id: str) -> Agent:
    """An agent the user owns (active or not) or may chat with."""
    agent = (
        selectors.owned_agents(user).filter(agent_id=agent_id).first()
        or selectors.agents_for(user).filter(agent_id=agent_id).first()
    )
    if agent is None:
        raise NotFound(f"Agent {agent_id!r} not found.")
    return agent


def _editable_agent(user: User, agent_id: str) -> Agent:
    agent = visible_agent(user=user, agent_id=agent_id)
    if agent.owner_id != user.pk:
        # Vault agents are visible to everyone, so refusing them is not a disclosure.
        raise PermissionDenied("Vault agents are read-only: only their owner may change them.")
    return agent


def _own_model_config(user: User, config_id: int | None) -> ModelConfig | None:
    if config_id is None:
        return None
    config = selectors.model_configs_for(user).filter(pk=config_id).first()
    if config is None:
        raise ValidationError({"model_config_id": f"Model config {config_id} not found."})
    return config


def _own_knowledge_bases(user: User, ids: Iterable[int]) -> list[KnowledgeBase]:
    wanted = set(ids)
    found = list(selectors.knowledge_bases_for(user).filter(pk__in=wanted))
    missing = sorted(wanted - {kb.pk for kb in found})
    if missing:
        raise ValidationError(
            {"knowledge_base_ids": f"Knowledge bases not found: {', '.join(map(str, missing))}."}
        )
    return found


def agent_details(agent: Agent, fields: Iterable[str] = ()) -> dict[str, Any]:
    """What an audit event says about an agent; changed fields by name, not their values."""
    details: dict[str, Any] = {"agent_id": agent.agent_id, "name": agent.name}
    if fields:
        details["fields"] = sorted(fields)
    return details


def _save_agent(agent: Agent, user: User, data: dict[str, Any], ip: str | None) -> Agent:
    if data.get("is_global") and not agent.is_global and not user.is_staff:
        raise PermissionDenied("Only staff may publish vault agents.")
    for name in AGENT_FIELDS:
        if name in data:
            setattr(agent, name, data[name])
    if "model_config_id" in data:
        agent.model_config = _own_model_config(user, data["model_config_id"])
    kbs = (
        _own_knowledge_bases(user, data["knowledge_base_ids"])
        if "knowledge_base_ids" in data
        else None
    )
    agent.full_clean()
    adding = agent._state.adding
    action = AuditEvent.Action.AGENT_CREATED if adding else AuditEvent.Action.AGENT_UPDATED
    try:
        with transaction.atomic():
            agent.save()
            if kbs is not None:
                agent.knowledge_bases.set(kbs)
            audit_record(
                actor=user,
                action=action,
                target=agent,
                details=agent_details(agent, () if adding else data.keys()),
                ip=ip,
            )
    except IntegrityError:
        # Two creates racing for one agent_id: the loser hears what full_clean would have said.
        raise ValidationError({"agent_id": "This agent id is taken."}) from None
    return agent


def agent_create(*, user: User, data: dict[str, Any], ip: str | None = None) -> Agent:
    """Create an agent owned by the user."""
    agent = Agent(owner=user)
    if data.get("agent_id"):
        agent.agent_id = data["agent_id"]
    return _save_agent(agent, user, data, ip)


def agent_update(
    *, user: User, agent_id: str, data: dict[str, Any], ip: str | None = None
) -> Agent:
    """Change the given fields of one of the user's agents."""
    return _save_agent(_editable_agent(user, agent_id), user, data, ip)


@transaction.atomic
def agent_delete(*, user: User, agent_id: str, ip: str | None = None) -> None:
    """Delete one of the user's agents with its sessions."""
    agent = _editable_agent(user, agent_id)
    # Recorded first: after delete() the agent has no primary key left to name.
    audit_record(
        actor=user,
        action=AuditEvent.Action.AGENT_DELETED,
        target=agent,
        details=agent_details(agent),
        ip=ip,
    )
    agent.delete()


def model_config_get(*, user: User, config_id: int) -> ModelConfig:
    """One of the user's model configs."""
    config = selectors.model_configs_for(user).filter(pk=config_id).first()
    if config is None:
        raise NotFound(f"Model config {config_id} not found.")
    return config


def model_config_save(
    *, user: User, data: dict[str, Any], config_id: int | None = None
) -> ModelConfig:
    """Create a model config, or change one of the user's."""
    config = (
        ModelConfig(owner=user)
        if config_id is None
        else model_config_get(user=user, config_id=config_id)
    )
    for name, value in data.items():
        setattr(config, name, value)
    config.full_clean()
    config.save()
    return config


def model_config_delete(*, user: User, config_id: int) -> None:
    """Delete a model config no agent uses (ProtectedError otherwise)."""
    model_config_get(user=user, config_id=config_id).delete()


def knowledge_base_get(*, user: User, kb_id: int) -> KnowledgeBase:
    """One of the user's knowledge bases."""
    kb = selectors.knowledge_bases_for(user).filter(pk=kb_id).first()
    if kb is None:
        raise NotFound(f"Knowledge base {kb_id} not found.")
    return kb


def knowledge_base_save(
    *, user: User, data: dict[str, Any], kb_id: int | None = None
) -> KnowledgeBase:
    """Create a knowledge base, or change one of the user's."""
    kb = KnowledgeBase(owner=user) if kb_id is None else knowledge_base_get(user=user, kb_id=kb_id)
    for name, value in data.items():
        setattr(kb, name, value)
    kb.full_clean()
    kb.save()
    return kb


def knowledge_base_delete(*, user: User, kb_id: int) -> None:
    """Delete one of the user's knowledge bases with its documents, their files and vectors."""
    kb = knowledge_base_get(user=user, kb_id=kb_id)
    files = [(doc.file.storage, doc.file.name) for doc in kb.documents.exclude(file="")]
    with transaction.atomic():
        kb.delete()
        # Files and the vector table go only once the rows are gone for good.
        for storage, name in files:
            if name:
                transaction.on_commit(partial(storage.delete, name))
        transaction.on_commit(drop_orphan_tables)
