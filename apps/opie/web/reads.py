"""Reads the web pages need beyond the service: every function takes the user it reads for."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.db.models import (
    Aggregate,
    Case,
    Count,
    F,
    FloatField,
    Prefetch,
    Q,
    QuerySet,
    Sum,
    When,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from apps.accounts.models import User
from apps.opie import selectors
from apps.opie.agentos.service import NotFound
from apps.opie.models import Agent, KnowledgeBase, KnowledgeDocument, RunRecord

FINAL_STATUSES = (KnowledgeDocument.Status.READY, KnowledgeDocument.Status.FAILED)


class Median(Aggregate):
    """The median of a column (PostgreSQL's ordered-set `percentile_cont`)."""

    function = "PERCENTILE_CONT"
    name = "Median"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def manageable_agents(user: User) -> list[Agent]:
    """The user's own agents (active or not) and the vault agents they may chat with."""
    kbs = Prefetch("knowledge_bases", queryset=KnowledgeBase.objects.order_by("name"))
    own = selectors.owned_agents(user).prefetch_related(kbs)
    vault = selectors.agents_for(user).exclude(owner=user).prefetch_related(kbs)
    return [*own, *vault]


def owned_agent(user: User, agent_id: str) -> Agent:
    """One of the user's own agents, to edit; anyone else's is not found."""
    agent = selectors.owned_agents(user).filter(agent_id=agent_id).first()
    if agent is None:
        raise NotFound(f"Agent {agent_id!r} not found.")
    return agent


def agent_performance(user: User) -> dict[int, dict[str, Any]]:
    """The user's runs per agent: count, failures, median latency of successes, tokens."""
    succeeded = Q(status=RunRecord.Status.SUCCEEDED)
    rows = (
        RunRecord.objects.filter(user=user, agent__isnull=False)
        .values("agent")
        .annotate(
            runs=Count("id"),
            failed=Count("id", filter=Q(status=RunRecord.Status.FAILED)),
            # percentile_cont skips NULLs: failed runs do not count towards latency.
            median_ms=Median(Case(When(succeeded, then=F("duration_ms")))),
            tokens=Sum("total_tokens", default=0),
        )
        .order_by()
    )
    return {
        int(row["agent"]): {name: value for name, value in row.items() if name != "agent"}
        for row in rows
    }


def tokens_per_day(user: User, days: int) -> list[dict[str, Any]]:
    """Tokens and runs of each of the last `days` days, oldest first, days without runs as 0."""
    today = timezone.localdate()
    since = today - timedelta(days=days - 1)
    rows = (
        RunRecord.objects.filter(user=user, created_at__date__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(tokens=Sum("total_tokens", default=0), runs=Count("id"))
        .order_by()
    )
    found: dict[date, dict[str, Any]] = {row["day"]: dict(row) for row in rows}
    return [
        {
            "day": day,
            "tokens": found.get(day, {}).get("tokens", 0),
            "runs": found.get(day, {}).get("runs", 0),
        }
        for day in (since + timedelta(days=offset) for offset in range(days))
    ]


def knowledge_bases_with_counts(user: User) -> QuerySet[KnowledgeBase]:
    """The user's knowledge bases with document counts by status."""
    status = KnowledgeDocument.Status
    return selectors.knowledge_bases_for(user).annotate(
        document_count=Count("documents"),
        ready_count=Count("documents", filter=Q(documents__status=status.READY)),
        failed_count=Count("documents", filter=Q(documents__status=status.FAILED)),
        agent_count=Count("agents", distinct=True),
    )


def knowledge_base(user: User, kb_id: int) -> KnowledgeBase:
    """One of the user's knowledge bases."""
    kb = selectors.knowledge_bases_for(user).filter(pk=kb_id).first()
    if kb is None:
        raise NotFound(f"Knowledge base {kb_id} not found.")
    return kb


def documents_of(user: User, kb_id: int, limit: int | None = None) -> list[KnowledgeDocument]:
    """The documents of one of the user's knowledge bases, newest first."""
    documents = selectors.documents_for(user).filter(knowledge_base_id=kb_id)
    return list(documents[:limit] if limit else documents)


def document(user: User, document_id: int) -> KnowledgeDocument:
    """One document of the user's knowledge bases."""
    found = selectors.documents_for(user).filter(pk=document_id).first()
    if found is None:
        raise NotFound(f"Document {document_id} not found.")
    return found


def uploadable_knowledge_bases(user: User, kb_ids: list[int]) -> list[KnowledgeBase]:
    """Those of an agent's knowledge bases the user owns, so may add documents to."""
    return list(selectors.knowledge_bases_for(user).filter(pk__in=kb_ids))


def recent_documents(user: User, kb_ids: list[int], limit: int = 5) -> list[KnowledgeDocument]:
    """The newest documents of these knowledge bases of the user's."""
    return list(selectors.documents_for(user).filter(knowledge_base_id__in=kb_ids)[:limit])
