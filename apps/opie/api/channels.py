"""External channels (SMS, WhatsApp...): each participant keeps talking in one session.

A messaging service written in another language posts `participant_id` + `message`; the
participant's session is found (or started) here and the turn runs through AgentOSService.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from apps.accounts.models import User
from apps.opie import selectors
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import Agent, ChannelParticipant, ChatSession


def _default_agent(user: User) -> Agent:
    """The agent a new participant talks to when the channel names none."""
    agents = selectors.agents_for(user)
    preferred = getattr(settings, "AGENTOS_CHANNEL_DEFAULT_AGENT", "")
    agent = (
        (agents.filter(agent_id=preferred).first() if preferred else None)
        or agents.filter(owner=user).first()
        or agents.first()
    )
    if agent is None:
        raise ValidationError({"agent_id": "You have no agent yet: create one or pass agent_id."})
    return agent


def _participant(user: User, participant_id: str, phone_number: str) -> ChannelParticipant:
    try:
        participant, created = ChannelParticipant.objects.get_or_create(
            user=user, participant_id=participant_id, defaults={"phone_number": phone_number}
        )
    except IntegrityError:
        # The participant's first two messages arrived together: the other request made it.
        participant, created = (
            ChannelParticipant.objects.get(user=user, participant_id=participant_id),
            False,
        )
    if not created and phone_number and participant.phone_number != phone_number:
        participant.phone_number = phone_number
        participant.save(update_fields=["phone_number", "updated_at"])
    return participant


def _session_for(
    service: AgentOSService, participant: ChannelParticipant, agent_id: str | None
) -> tuple[ChatSession, bool]:
    """The participant's session, or a new one when there is none or another agent is asked."""
    with transaction.atomic():
        locked = ChannelParticipant.objects.select_for_update().get(pk=participant.pk)
        session = locked.session
        usable = (
            session is not None
            and selectors.agents_for(service.user).filter(pk=session.agent_id).exists()
        )
        if session is not None and usable and agent_id in (None, session.agent.agent_id):
            return session, False
        agent_id = agent_id or _default_agent(service.user).agent_id
        created = service.create_session(agent_id, f"Channel: {locked.participant_id}")
        session = selectors.session_for(service.user, created["session_id"])
        locked.session = session
        locked.save(update_fields=["session", "updated_at"])
        return session, True


def channel_message(
    *,
    user: User,
    participant_id: str,
    message: str,
    phone_number: str = "",
    agent_id: str | None = None,
) -> dict[str, Any]:
    """Run one turn for a channel participant: {"response", "state", "metadata"}."""
    service = AgentOSService(user)
    participant = _participant(user, participant_id, phone_number)
    session, new_session = _session_for(service, participant, agent_id)
    # The model call runs outside any transaction: it can take a long time.
    result = service.send_message(session.agent.agent_id, session.session_id, message)
    return {
        "response": result.get("content") or result.get("error") or "",
        "state": {
            "participant_id": participant_id,
            "session_id": session.session_id,
            "agent_id": session.agent.agent_id,
            "status": result.get("status", "failed"),
            "new_session": new_session,
        },
        "metadata": {
            "run_id": result.get("run_id", ""),
            "phone_number": phone_number or participant.phone_number,
            "usage": result.get("usage") or {},
            "tool_calls": result.get("tool_calls", []),
            "references": result.get("references", []),
            "error": result.get("error"),
            "model": result.get("model", ""),
            "duration_ms": result.get("duration_ms", 0),
        },
    }
