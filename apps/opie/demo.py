"""The demo account `make run` creates, so a new user has something to click on."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from django.db import transaction

from apps.accounts.audit import audit_record
from apps.accounts.models import AuditEvent, User
from apps.opie.documents import document_create
from apps.opie.models import Agent, KnowledgeBase, ModelConfig
from apps.opie.services import agent_details

DEMO_EMAIL = "demo@opie.local"
DEMO_PASSWORD = "opie-demo"  # noqa: S105 - a documented local demo login, not a secret

DEMO_HANDBOOK = """\
# Opie demo handbook

Refunds: a refund takes 5 to 7 business days after the returned item arrives.
Support hours: the support team answers from 9:00 to 17:00 UTC, Monday to Friday.
Shipping: orders over 50 euros ship free within the European Union.
"""


class DemoAgent(TypedDict):
    agent_id: str
    name: str
    description: str
    instructions: str
    tools: list[str]
    knowledge: NotRequired[bool]


DEMO_AGENTS: list[DemoAgent] = [
    {
        "agent_id": "demo-assistant",
        "name": "Assistant",
        "description": "A general helper with a calculator and a clock.",
        "instructions": "You are a concise, friendly assistant. Answer in one or two sentences.",
        "tools": ["calculator", "current_datetime"],
    },
    {
        "agent_id": "demo-support",
        "name": "Support desk",
        "description": "Answers from the demo handbook, with citations.",
        "instructions": "Answer customer questions using the handbook. Cite what you used.",
        "tools": [],
        "knowledge": True,
    },
    {
        "agent_id": "demo-math",
        "name": "Math tutor",
        "description": "Works out arithmetic with the calculator tool.",
        "instructions": "Use the calculator for every computation, then explain the result.",
        "tools": ["calculator"],
    },
]


@transaction.atomic
def ensure_demo_account() -> tuple[User, bool]:
    """Create the demo user, model config, knowledge base and agents if missing; idempotent."""
    user, created = User.objects.get_or_create(
        email=DEMO_EMAIL, defaults={"name": "Demo user", "is_staff": True, "is_superuser": True}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save(update_fields=["password"])
    model_config, _ = ModelConfig.objects.get_or_create(
        owner=user, name="Local model", defaults={"provider": ModelConfig.Provider.LOCAL}
    )
    handbook, _ = KnowledgeBase.objects.get_or_create(
        owner=user, name="Demo handbook", defaults={"description": "Refunds, support, shipping."}
    )
    if not handbook.documents.exists():
        document_create(
            user=user, knowledge_base_id=handbook.pk, title="Handbook", text=DEMO_HANDBOOK
        )
    for spec in DEMO_AGENTS:
        agent, agent_created = Agent.objects.get_or_create(
            agent_id=spec["agent_id"],
            defaults={
                "owner": user,
                "name": spec["name"],
                "description": spec["description"],
                "instructions": spec["instructions"],
                "tools": spec["tools"],
                "model_config": model_config,
            },
        )
        if spec.get("knowledge"):
            agent.knowledge_bases.add(handbook)
        if agent_created:
            audit_record(
                actor=None,
                action=AuditEvent.Action.AGENT_CREATED,
                target=agent,
                details={**agent_details(agent), "source": "demo"},
            )
    return user, created
