"""The dashboard: the user's agents, recent sessions, token usage and the AgentOS instance."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.opie.agentos.config import AgentsUnavailable, ensure_enabled
from apps.opie.agentos.service import AgentOSService
from apps.opie.web import reads
from apps.opie.web.charts import tokens_chart
from apps.opie.web.common import AuthedRequest

USAGE_DAYS = 14
RECENT_SESSIONS = 8


@login_required
@require_GET
def dashboard(request: AuthedRequest) -> HttpResponse:
    """The user's agents, recent sessions, tokens per day and the AgentOS instance."""
    service = AgentOSService(request.user)
    unavailable = None
    try:
        ensure_enabled()
    except AgentsUnavailable as exc:
        unavailable = str(exc)
    context = {
        "agents": service.get_available_agents(),
        "sessions": service.get_sessions(limit=RECENT_SESSIONS),
        "info": service.get_info(),
        "chart": tokens_chart(reads.tokens_per_day(request.user, USAGE_DAYS)),
        "usage_days": USAGE_DAYS,
        "unavailable": unavailable,
    }
    return render(request, "opie/dashboard.html", context)
