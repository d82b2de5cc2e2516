"""Web views of the agent product: thin, they call AgentOSService and render."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.accounts.models import User
from apps.opie.agentos.config import AgentsUnavailable, ensure_enabled
from apps.opie.agentos.service import AgentOSService


class AuthedRequest(HttpRequest):
    user: User


@login_required
def dashboard(request: AuthedRequest) -> HttpResponse:
    """The user's agents, recent sessions and the AgentOS instance."""
    service = AgentOSService(request.user)
    unavailable = None
    try:
        ensure_enabled()
    except AgentsUnavailable as exc:
        unavailable = str(exc)
    context = {
        "agents": service.get_available_agents(),
        "sessions": service.get_sessions(limit=10),
        "info": service.get_info(),
        "unavailable": unavailable,
    }
    return render(request, "opie/dashboard.html", context)
