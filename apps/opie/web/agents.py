"""Agent pages: the list with capabilities and performance, and the create and edit forms."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.accounts.audit import client_ip
from apps.opie import services
from apps.opie.agentos.tools import tool_registry
from apps.opie.forms import AgentForm
from apps.opie.models import Agent
from apps.opie.web import reads
from apps.opie.web.common import AuthedRequest


@login_required
@require_GET
def agent_list(request: AuthedRequest) -> HttpResponse:
    """Each agent's model, tools, knowledge bases and how its runs went."""
    performance = reads.agent_performance(request.user)
    registry = tool_registry()
    rows = [
        {
            "agent": agent,
            "editable": agent.owner_id == request.user.pk,
            "model": _model_label(agent),
            "tools": [
                {"name": name, "doc": (registry[name].__doc__ or "").strip().split("\n")[0]}
                for name in agent.tools
                if name in registry
            ],
            "knowledge_bases": list(agent.knowledge_bases.all()),
            "stats": performance.get(agent.pk),
        }
        for agent in reads.manageable_agents(request.user)
    ]
    return render(request, "opie/agents.html", {"rows": rows})


def _model_label(agent: Agent) -> str:
    config = agent.model_config
    if config is None:
        return "Built-in local model"
    return f"{config.get_provider_display()}: {config.model_id}" if config.model_id else config.name


def _render_form(request: AuthedRequest, form: AgentForm) -> HttpResponse:
    status = 400 if form.errors else 200
    return render(request, "opie/agent_form.html", {"form": form}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def agent_create(request: AuthedRequest) -> HttpResponse:
    """Create an agent; field errors are shown on the form."""
    form = AgentForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            agent = services.agent_create(
                user=request.user, data=form.service_data(), ip=client_ip(request)
            )
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, f"Agent “{agent.name}” created.")
            return redirect("opie:agents")
    return _render_form(request, form)


@login_required
@require_http_methods(["GET", "POST"])
def agent_edit(request: AuthedRequest, agent_id: str) -> HttpResponse:
    """Edit one of the user's agents."""
    agent = reads.owned_agent(request.user, agent_id)
    form = AgentForm(request.POST or None, user=request.user, agent=agent)
    if request.method == "POST" and form.is_valid():
        try:
            services.agent_update(
                user=request.user,
                agent_id=agent_id,
                data=form.service_data(),
                ip=client_ip(request),
            )
        except ValidationError as exc:
            form.add_service_errors(exc)
        else:
            messages.success(request, f"Agent “{form.cleaned_data['name']}” saved.")
            return redirect("opie:agents")
    return _render_form(request, form)


@login_required
@require_POST
def agent_delete(request: AuthedRequest, agent_id: str) -> HttpResponse:
    """Delete one of the user's agents with its sessions."""
    agent = reads.owned_agent(request.user, agent_id)
    services.agent_delete(user=request.user, agent_id=agent.agent_id, ip=client_ip(request))
    messages.success(request, f"Agent “{agent.name}” deleted.")
    return redirect("opie:agents")
