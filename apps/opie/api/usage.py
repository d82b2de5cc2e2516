"""Token usage of the user's runs: per day, per agent and per model."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from apps.accounts.models import User
from apps.opie.models import RunRecord

TOTALS = {
    "runs": Count("id"),
    "input_tokens": Sum("input_tokens", default=0),
    "output_tokens": Sum("output_tokens", default=0),
    "total_tokens": Sum("total_tokens", default=0),
}


def runs_for(user: User) -> QuerySet[RunRecord]:
    """The user's run records (the only way this module reads them)."""
    return RunRecord.objects.filter(user=user)


def _agent_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_id": row.pop("agent__agent_id"),
        "name": row.pop("agent__name") or "(deleted agent)",
        **row,
    }


def usage_summary(*, user: User, days: int) -> dict[str, Any]:
    """Tokens and runs of the last `days` days, in total and grouped three ways."""
    since = timezone.localdate() - timedelta(days=days - 1)
    runs = runs_for(user).filter(created_at__date__gte=since).order_by()
    by_day = (
        runs.annotate(date=TruncDate("created_at"))
        .values("date")
        .annotate(**TOTALS)
        .order_by("date")
    )
    by_agent = (
        runs.values("agent__agent_id", "agent__name").annotate(**TOTALS).order_by("-total_tokens")
    )
    by_model = runs.values("provider", "model").annotate(**TOTALS).order_by("-total_tokens")
    return {
        "days": days,
        "since": since,
        "totals": runs.aggregate(**TOTALS),
        "by_day": list(by_day),
        "by_agent": [_agent_row(dict(row)) for row in by_agent],
        "by_model": list(by_model),
    }
