"""Django agents as agno agents: building, caching per user, and the AgentOS instance.

`agent_os_config` is the process-wide instance. Built agents live in a bounded per-process
cache keyed by (user, agent, config version); the version lives in the shared cache (see
`versions`), so an edit in any process makes every process rebuild on its next use.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connections

from apps.opie.agentos import prompts, versions
from apps.opie.agentos.db import in_thread
from apps.opie.agentos.lru import LRU
from apps.opie.agentos.tools import get_tools

if TYPE_CHECKING:
    from agno.agent import Agent as AgnoAgent
    from agno.db.postgres import PostgresDb
    from agno.os import AgentOS

    from apps.accounts.models import User
    from apps.opie.agentos.providers import ProviderSpec
    from apps.opie.models import Agent, ModelConfig

logger = logging.getLogger(__name__)

AGNO_SCHEMA = "agno"
# Past this many cached agents a process drops the least recently used ones, so memory stays
# bounded however many users it serves.
DEFAULT_MAX_CACHED_AGENTS = 2000
# With the shared cache unreachable, versions are unknown: reuse a built agent this long only.
UNVERSIONED_TTL = 30.0
HISTORY_RUNS = 10


class AgentsUnavailable(Exception):
    """AgentOS is disabled or cannot start; pages and the API answer 'agents are unavailable'."""


def ensure_enabled() -> None:
    """Raise AgentsUnavailable when AGENTOS_ENABLED is off."""
    if not settings.AGENTOS_ENABLED:
        raise AgentsUnavailable("Agents are unavailable: AgentOS is disabled on this server.")


def provider_spec(model_config: ModelConfig | None) -> ProviderSpec:
    """The provider description of a model config; None means the built-in local model."""
    from apps.opie.agentos.providers import ProviderSpec

    timeout, retries = float(settings.AGENTOS_MODEL_TIMEOUT), settings.AGENTOS_MODEL_MAX_RETRIES
    if model_config is None:
        return ProviderSpec(provider="local", timeout=timeout, max_retries=retries)
    return ProviderSpec(
        provider=model_config.provider,
        model_id=model_config.model_id,
        base_url=model_config.base_url,
        api_key_env=model_config.api_key_env,
        temperature=model_config.temperature,
        max_tokens=model_config.max_tokens,
        timeout=timeout,
        max_retries=retries,
    )


def sqlalchemy_url() -> str:
    """The SQLAlchemy URL of Django's default database (the test database under pytest)."""
    from sqlalchemy.engine import URL

    conf = connections["default"].settings_dict
    host = conf.get("HOST") or None
    query = {}
    if host and host.startswith("/"):
        query, host = {"host": host}, None
    return URL.create(
        "postgresql+psycopg",
        username=conf.get("USER") or None,
        password=conf.get("PASSWORD") or None,
        host=host,
        port=int(conf["PORT"]) if conf.get("PORT") else None,
        database=conf["NAME"],
        query=query,
    ).render_as_string(hide_password=False)


@dataclass(frozen=True)
class _Entry:
    agent: AgnoAgent
    version: str | None
    built_at: float


class AgentCache:
    """Built agno agents by (user, agent), valid while their config version is unchanged."""

    def __init__(self, max_entries: int, ttl: float) -> None:
        self.ttl = ttl
        self._entries: LRU[tuple[int, int], _Entry] = LRU(max_entries)
        self.hits = 0
        self.misses = 0

    @property
    def max_entries(self) -> int:
        """How many agents the cache holds at most."""
        return self._entries.max_entries

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        self._entries.max_entries = value

    def get(self, key: tuple[int, int], version: str | None) -> AgnoAgent | None:
        """The cached agent when it is fresh and of this version."""
        entry = self._entries.get(key)
        if entry is not None:
            ttl = self.ttl if version is not None else min(self.ttl, UNVERSIONED_TTL)
            if entry.version == version and time.monotonic() - entry.built_at < ttl:
                self.hits += 1
                return entry.agent
            self._entries.pop(key)
        self.misses += 1
        return None

    def put(self, key: tuple[int, int], version: str | None, agent: AgnoAgent) -> None:
        """Cache an agent."""
        self._entries.put(key, _Entry(agent, version, time.monotonic()))

    def clear(self) -> None:
        """Forget every cached agent."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _row_key(user: User, agent_id: str) -> tuple[int, str, bool]:
    # Whether vault agents are visible is part of what the user was allowed to see.
    return (user.pk, agent_id, settings.AGENTOS_INCLUDE_VAULT_AGENTS)


class AgentOSConfig:
    """Builds agno agents from Django rows and keeps them cached per user."""

    def __init__(self) -> None:
        self.cache = AgentCache(
            max_entries=getattr(settings, "AGENTOS_CACHE_MAX_AGENTS", DEFAULT_MAX_CACHED_AGENTS),
            ttl=float(settings.AGENTOS_CACHE_TTL),
        )
        # (user, public agent id) -> the row the user was allowed to resolve and its version,
        # so a warm turn needs no query: an edit bumps the version and forces a fresh lookup.
        self._rows: LRU[tuple[int, str, bool], tuple[Agent, str | None]] = LRU(
            self.cache.max_entries
        )
        self._db: PostgresDb | None = None
        self._db_url: str | None = None
        self._lock = threading.Lock()

    def get_db(self) -> PostgresDb:
        """agno's session storage, in Django's database under its own schema."""
        url = sqlalchemy_url()
        with self._lock:
            if self._db is None or self._db_url != url:
                from sqlalchemy import create_engine

                from apps.opie.agentos.store import OpieAgnoDb

                # Sessions are read and written briefly per turn: a small pool serves many
                # concurrent turns, and the server's connection limit is shared with Django's.
                # No pre-ping: OpieAgnoDb retries a read whose connection died in a restart.
                engine = create_engine(url, pool_size=5, max_overflow=5)
                self._db = OpieAgnoDb(db_engine=engine, db_schema=AGNO_SCHEMA)
                self._db_url = url
                share_cancellations()
            return self._db

    def create_agent_from_django(
        self, django_agent: Agent, user: User, session_id: str | None = None
    ) -> AgnoAgent:
        """Build (without caching) the agno Agent for a Django agent, as `user` will use it."""
        from agno.agent import Agent as AgnoAgent

        from apps.opie.agentos.providers import get_model
        from apps.opie.agentos.runs import make_run_recorder

        spec = provider_spec(django_agent.model_config)
        instructions = [django_agent.instructions or prompts.DEFAULT_INSTRUCTIONS]
        tools: list[Callable[..., Any]] = list(get_tools(list(django_agent.tools)))
        knowledge_base_ids = [kb.pk for kb in django_agent.knowledge_bases.all()]
        if knowledge_base_ids:
            instructions.append(prompts.KNOWLEDGE_INSTRUCTIONS)
            tools.append(knowledge_search_tool(knowledge_base_ids))
        freeze_loaded_modules()
        return AgnoAgent(
            id=django_agent.agent_id,
            name=django_agent.name,
            description=django_agent.description or None,
            instructions=instructions,
            model=get_model(spec),
            tools=tools,
            db=self.get_db(),
            session_id=session_id,
            add_history_to_context=True,
            num_history_runs=HISTORY_RUNS,
            markdown=True,
            telemetry=False,
            post_hooks=[make_run_recorder(django_agent.pk, spec.provider)],
        )

    def get_agent(self, django_agent: Agent, user: User) -> AgnoAgent:
        """The cached agno Agent for this user and agent, rebuilt when its config changed."""
        return self.get_agents([django_agent], user)[0]

    async def aget_agent(
        self, django_agent: Agent, user: User, version: str | None = None
    ) -> AgnoAgent:
        """Async `get_agent`: a cache hit stays on the event loop, a build goes to a thread.

        `version` is the agent's version when the caller has just read it.
        """
        ensure_enabled()
        if version is None:
            version = versions.agent_versions([django_agent.pk])[django_agent.pk]
        key = (user.pk, django_agent.pk)
        agent = self.cache.get(key, version)
        if agent is None:
            agent = await in_thread(self.create_agent_from_django, django_agent, user)
            self.cache.put(key, version, agent)
        return agent

    def agent_row(self, user: User, agent_id: str) -> tuple[Agent, str | None]:
        """The user's agent row and its version, with no query while the version holds.

        Raises Agent.DoesNotExist when the user may not use the agent (sync: may query).
        """
        key = _row_key(user, agent_id)
        found = self._current_row(key)
        if found is None:
            from apps.opie.selectors import agent_for

            row = agent_for(user, agent_id)
            found = (row, versions.agent_versions([row.pk])[row.pk])
            self._rows.put(key, found)
        return found

    async def aresolve(
        self, user: User, agent_id: str, known: tuple[Agent, str | None] | None = None
    ) -> tuple[Agent, AgnoAgent]:
        """The user's agent row and built agno Agent; raises Agent.DoesNotExist if not theirs.

        `known` is what `agent_row` answered for this turn moments ago; else it is asked now,
        on the event loop when the row is cached, in a thread when it needs a query.
        """
        ensure_enabled()
        found = known or self._current_row(_row_key(user, agent_id))
        if found is None:
            found = await in_thread(self.agent_row, user, agent_id)
        row, version = found
        return row, await self.aget_agent(row, user, version)

    def _current_row(self, key: tuple[int, str, bool]) -> tuple[Agent, str | None] | None:
        """The cached row and version under key, unless an edit has bumped the version."""
        cached = self._rows.get(key)
        if cached is None:
            return None
        row, version = cached
        current = versions.agent_versions([row.pk])[row.pk]
        return cached if version is not None and current == version else None

    def clear(self) -> None:
        """Forget every built agent and resolved row of this process."""
        self.cache.clear()
        self._rows.clear()

    def get_agents(self, django_agents: list[Agent], user: User) -> list[AgnoAgent]:
        """Cached agno Agents for several agents, reading their versions in one round trip."""
        ensure_enabled()
        current = versions.agent_versions([a.pk for a in django_agents])
        built = []
        for django_agent in django_agents:
            key = (user.pk, django_agent.pk)
            agent = self.cache.get(key, current[django_agent.pk])
            if agent is None:
                agent = self.create_agent_from_django(django_agent, user)
                self.cache.put(key, current[django_agent.pk], agent)
            built.append(agent)
        return built

    def initialize_agent_os(self, user: User) -> AgentOS:
        """An AgentOS holding exactly this user's agents (plus vault agents when enabled)."""
        from agno.os import AgentOS

        from apps.opie.selectors import agents_for

        agents = self.get_agents(list(agents_for(user).prefetch_related("knowledge_bases")), user)
        return AgentOS(
            id=f"opie-user-{user.pk}",
            name="Opie AgentOS",
            description=f"Agents of {user.email}",
            agents=list[Any](agents),
            db=self.get_db(),
            telemetry=False,
            auto_provision_dbs=True,
        )


_cancellations_shared = False


_frozen_after_agno = False


def freeze_loaded_modules() -> None:
    """Once agno is loaded, keep what is in memory out of the garbage collector's full scans.

    agno and its dependencies add a few hundred thousand long-lived objects. A full collection
    walks all of them with the GIL held: measured at 100 concurrent chats, 50-140 ms pauses
    of the event loop every few seconds. Frozen objects are never scanned (nor freed, which
    they would not be anyway: they are modules, classes and the startup's own objects).
    """
    global _frozen_after_agno
    if not _frozen_after_agno:
        _frozen_after_agno = True
        gc.freeze()


def share_cancellations() -> None:
    """With Redis configured, a cancel sent to any process reaches the run wherever it runs."""
    global _cancellations_shared
    if _cancellations_shared or not settings.REDIS_URL:
        return
    _cancellations_shared = True
    from agno.run.cancel import set_cancellation_manager

    from apps.opie.agentos.cancellation import PerLoopRedisCancellationManager

    set_cancellation_manager(PerLoopRedisCancellationManager(settings.REDIS_URL))


def knowledge_search_tool(knowledge_base_ids: list[int]) -> Callable[..., Any]:
    """A `search_knowledge` tool bound, by the server, to these knowledge bases only."""

    async def search_knowledge(query: str) -> str:
        """Search the knowledge base for passages relevant to the query."""
        from apps.opie.agentos.knowledge import asearch

        references = await asearch(knowledge_base_ids, query)
        if not references:
            return prompts.NO_RESULTS
        return "\n".join(
            [
                prompts.DOCUMENTS_OPEN,
                json.dumps([reference.as_dict() for reference in references], ensure_ascii=False),
                prompts.DOCUMENTS_CLOSE,
            ]
        )

    return search_knowledge


agent_os_config = AgentOSConfig()
