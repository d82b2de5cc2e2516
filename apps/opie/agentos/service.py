"""AgentOSService(user): every user-facing agent operation, shared by every door.

Web views, REST views, the AgentOS server and the management commands call this class and
nothing else for agents, runs and sessions, so they behave alike and are scoped alike.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError

from apps.opie import selectors
from apps.opie.agentos import events, runs
from apps.opie.agentos.config import AgentsUnavailable, agent_os_config, ensure_enabled
from apps.opie.agentos.db import in_thread, release_connections
from apps.opie.agentos.events import AgentEvent
from apps.opie.asgi import step_aside
from apps.opie.models import Agent, ChatSession, RunRecord

if TYPE_CHECKING:
    from apps.accounts.models import User

logger = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
MAX_TITLE = 200


class ServiceError(Exception):
    """An error a user can act on; `code` is stable for API clients."""

    code = "error"


class NotFound(ServiceError):
    """A missing id, or one the user may not see: both are answered alike."""

    code = "not_found"


class InvalidInput(ServiceError):
    """A request the service cannot accept as given."""

    code = "invalid"


__all__ = ["AgentEvent", "AgentOSService", "AgentsUnavailable", "InvalidInput", "NotFound"]


def _max_message_chars() -> int:
    return int(getattr(settings, "AGENTOS_MAX_MESSAGE_CHARS", 32_000))


class AgentOSService:
    """Agent operations on behalf of one user."""

    def __init__(self, user: User) -> None:
        self.user = user
        # Agents resolved by `prepare_turn`, so the turn it prepares does not look them up again.
        self._prepared: dict[str, tuple[Agent, str | None]] = {}

    def _agent(self, agent_id: str) -> Agent:
        try:
            return selectors.agent_for(self.user, str(agent_id))
        except Agent.DoesNotExist:
            raise NotFound(f"Agent {agent_id!r} not found.") from None

    def _session(self, session_id: str) -> ChatSession:
        try:
            return selectors.session_for(self.user, str(session_id))
        except ChatSession.DoesNotExist:
            raise NotFound(f"Session {session_id!r} not found.") from None

    def get_available_agents(self) -> list[dict[str, Any]]:
        """The agents this user may chat with."""
        agents = selectors.agents_for(self.user).prefetch_related("knowledge_bases")
        return [agent_summary(agent, self.user) for agent in agents]

    def get_agent(self, agent_id: str) -> dict[str, Any]:
        """One agent the user may chat with."""
        return agent_summary(self._agent(agent_id), self.user)

    def create_session(self, agent_id: str, title: str = "") -> dict[str, Any]:
        """Start an empty session with an agent."""
        agent = self._agent(agent_id)
        session = ChatSession.objects.create(user=self.user, agent=agent, title=_clean_title(title))
        return session_summary(session)

    def get_sessions(self, agent_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The user's sessions, newest first."""
        sessions = selectors.sessions_for(self.user, agent_id=agent_id)[:limit]
        return [session_summary(session) for session in sessions]

    def get_session(self, session_id: str) -> dict[str, Any]:
        """A session with its full message history, whichever door wrote it."""
        session = self._session(session_id)
        return {
            **session_summary(session),
            "messages": runs.session_messages(session.session_id, self.user.pk),
        }

    def rename_session(self, session_id: str, title: str) -> dict[str, Any]:
        """Give a session a new title."""
        session = self._session(session_id)
        title = _clean_title(title)
        if not title:
            raise InvalidInput("A title is required.")
        session.title = title
        session.save(update_fields=["title", "updated_at"])
        runs.rename_agno_session(session.session_id, self.user.pk, title)
        return session_summary(session)

    def delete_session(self, session_id: str) -> None:
        """Delete a session and its history."""
        session = self._session(session_id)
        runs.delete_agno_session(session.session_id, self.user.pk)
        runs.claimed.pop(session.session_id)
        session.delete()

    def send_message(self, agent_id: str, session_id: str | None, message: str) -> dict[str, Any]:
        """Send a message and wait for the whole answer and its bookkeeping (the spec's form)."""

        async def send_and_record() -> dict[str, Any]:
            result = await self.asend_message(agent_id, message, session_id)
            await runs.wait_recorded(result["run_id"], timeout=runs.RECORD_WAIT_SECONDS)
            return result

        # The turn may take minutes: the caller's connection waits in the pool meanwhile, and
        # the next request runs in this request's place.
        release_connections()
        step_aside()
        result: dict[str, Any] = async_to_sync(send_and_record)()
        return result

    async def asend_message(
        self, agent_id: str, message: str, session_id: str | None = None
    ) -> dict[str, Any]:
        """Send a message; the answer carries content, ids, usage, tool calls and references."""
        result: dict[str, Any] = {}
        tool_calls: list[dict[str, Any]] = []
        references: list[dict[str, Any]] = []
        async for event in self.astream_message(agent_id, message, session_id):
            if event.type == events.TOOL_RESULT:
                tool_calls.append(event.data)
            elif event.type == events.REFERENCES:
                references = event.data["references"]
            elif event.type in events.FINAL:
                result = dict(event.data)
                break
        result["tool_calls"] = tool_calls
        result["references"] = references
        return result

    async def astream_message(
        self, agent_id: str, message: str, session_id: str | None = None
    ) -> AsyncIterator[AgentEvent]:
        """Stream a turn as events; the turn completes and is saved even if the reader leaves."""
        ensure_enabled()
        message = _clean_message(message)
        try:
            agent_row, agno_agent = await agent_os_config.aresolve(
                self.user, str(agent_id), self._prepared.pop(str(agent_id), None)
            )
        except Agent.DoesNotExist:
            raise NotFound(f"Agent {agent_id!r} not found.") from None
        claim = runs.claimed.get(session_id) if session_id is not None else None
        if claim is not None and (claim.user_id, claim.agent_id) == (self.user.pk, agent_row.pk):
            turn_session = str(session_id)
        else:
            session = await in_thread(self.claim_session, agent_row, session_id, message)
            turn_session = session.session_id
        async for event in runs.stream_turn(
            agno_agent,
            agent_row=agent_row,
            session_id=turn_session,
            user=self.user,
            message=message,
        ):
            yield event

    def prepare_turn(
        self, agent_id: str, session_id: str | None, message: str
    ) -> tuple[Agent, ChatSession]:
        """Resolve the agent and claim the session for this user (created when new)."""
        try:
            found = agent_os_config.agent_row(self.user, str(agent_id))
        except Agent.DoesNotExist:
            raise NotFound(f"Agent {agent_id!r} not found.") from None
        agent = found[0]
        session = self.claim_session(agent, session_id, message)
        self._prepared[str(agent_id)] = found
        return agent, session

    def claim_session(self, agent: Agent, session_id: str | None, message: str) -> ChatSession:
        """The user's session with this agent, created when new; a foreign one is not found."""
        title = _clean_title(message)[:80]
        if session_id is None:
            session = ChatSession.objects.create(user=self.user, agent=agent, title=title)
        else:
            session = self._existing_or_new_session(agent, session_id, title)
        runs.claimed.put(session.session_id, runs.Claim(session.pk, self.user.pk, agent.pk))
        return session

    def _existing_or_new_session(self, agent: Agent, session_id: str, title: str) -> ChatSession:
        if not SESSION_ID.match(str(session_id)):
            raise InvalidInput("session_id may hold letters, digits and -_.: (at most 64).")
        try:
            session, _ = ChatSession.objects.get_or_create(
                session_id=session_id, defaults={"user": self.user, "agent": agent, "title": title}
            )
        except IntegrityError:
            session = ChatSession.objects.get(session_id=session_id)
        if session.user_id != self.user.pk:
            raise NotFound(f"Session {session_id!r} not found.")
        if session.agent_id != agent.pk:
            raise InvalidInput(f"Session {session_id!r} belongs to another agent.")
        return session

    async def acancel_run(self, run_id: str) -> bool:
        """Ask a running run of this user's to stop; False when it is not running."""
        if cache.get(runs.RUN_OWNER_KEY.format(run_id)) != self.user.pk:
            raise NotFound(f"Run {run_id!r} not found.")
        return await runs.cancel(run_id)

    def cancel_run(self, run_id: str) -> bool:
        """Synchronous form of `acancel_run`."""
        cancelled: bool = async_to_sync(self.acancel_run)(run_id)
        return cancelled

    def get_info(self) -> dict[str, Any]:
        """What a client needs to know about this AgentOS instance."""
        agents = selectors.agents_for(self.user)
        return {
            "name": "Opie AgentOS",
            "enabled": settings.AGENTOS_ENABLED,
            "host": settings.AGENTOS_DEFAULT_HOST,
            "port": settings.AGENTOS_DEFAULT_PORT,
            "user": {"id": self.user.pk, "email": self.user.email},
            "agents": agents.count(),
            "sessions": selectors.sessions_for(self.user).count(),
            "vault_agents_included": settings.AGENTOS_INCLUDE_VAULT_AGENTS,
            "cache_ttl": settings.AGENTOS_CACHE_TTL,
            "cached_agents": len(agent_os_config.cache),
            "runs": RunRecord.objects.filter(user=self.user).count(),
        }


def agent_summary(agent: Agent, user: User) -> dict[str, Any]:
    """The public description of an agent."""
    config = agent.model_config
    return {
        "agent_id": agent.agent_id,
        "name": agent.name,
        "description": agent.description,
        "tools": list(agent.tools),
        "knowledge_bases": [{"id": kb.pk, "name": kb.name} for kb in agent.knowledge_bases.all()],
        "model": {
            "provider": config.provider if config else "local",
            "model_id": config.model_id if config else "",
        },
        "is_global": agent.is_global,
        "editable": agent.owner_id == user.pk,
        "created_at": agent.created_at.isoformat(),
        "updated_at": agent.updated_at.isoformat(),
    }


def session_summary(session: ChatSession) -> dict[str, Any]:
    """The public description of a session."""
    return {
        "session_id": session.session_id,
        "agent_id": session.agent.agent_id,
        "agent_name": session.agent.name,
        "title": session.title,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
    }


def _clean_title(title: str | None) -> str:
    return " ".join(str(title or "").split())[:MAX_TITLE]


def _clean_message(message: Any) -> str:
    if not isinstance(message, str) or not message.strip():
        raise InvalidInput("A non-empty message is required.")
    if len(message) > _max_message_chars():
        raise InvalidInput(f"The message is longer than {_max_message_chars()} characters.")
    return message
