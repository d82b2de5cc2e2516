"""Small factories for the product's rows."""

from __future__ import annotations

from typing import Any

from apps.accounts.models import User
from apps.opie.models import Agent, ChatSession, KnowledgeBase, KnowledgeDocument, ModelConfig


def model_config(owner: User, **fields: Any) -> ModelConfig:
    fields.setdefault("name", f"config-{ModelConfig.objects.count() + 1}")
    return ModelConfig.objects.create(owner=owner, **fields)


def agent(owner: User, **fields: Any) -> Agent:
    fields.setdefault("name", f"agent-{Agent.objects.count() + 1}")
    fields.setdefault("instructions", "Be brief.")
    knowledge_bases = fields.pop("knowledge_bases", [])
    created = Agent.objects.create(owner=owner, **fields)
    created.knowledge_bases.set(knowledge_bases)
    return created


def knowledge_base(owner: User, **fields: Any) -> KnowledgeBase:
    fields.setdefault("name", f"kb-{KnowledgeBase.objects.count() + 1}")
    return KnowledgeBase.objects.create(owner=owner, **fields)


def document(kb: KnowledgeBase, **fields: Any) -> KnowledgeDocument:
    fields.setdefault("title", "doc")
    fields.setdefault("source", KnowledgeDocument.Source.TEXT)
    return KnowledgeDocument.objects.create(knowledge_base=kb, **fields)


def session(user: User, on: Agent, **fields: Any) -> ChatSession:
    return ChatSession.objects.create(user=user, agent=on, **fields)
