"""Model config pages: the user's LLM settings, listed with the agents using each, and edited."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count, ProtectedError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from apps.opie import selectors, services
from apps.opie.forms import ModelConfigForm
from apps.opie.models import ModelConfig
from apps.opie.web.common import AuthedRequest


@login_required
@require_http_methods(["GET", "POST"])
def model_config_list(request: AuthedRequest) -> HttpResponse:
    """The user's model configs, and a form to add one."""
    form = ModelConfigForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and _saved(request, form, None):
        return redirect("opie:model-configs")
    configs = selectors.model_configs_for(request.user).annotate(agent_count=Count("agents"))
    status = 400 if form.errors else 200
    context = {"configs": configs, "form": form}
    return render(request, "opie/model_configs.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def model_config_edit(request: AuthedRequest, config_id: int) -> HttpResponse:
    """Change one of the user's model configs; agents using it pick it up on their next turn."""
    config = services.model_config_get(user=request.user, config_id=config_id)
    title = config.name  # the form changes the instance it validates
    form = ModelConfigForm(request.POST or None, instance=config)
    if request.method == "POST" and form.is_valid() and _saved(request, form, config):
        return redirect("opie:model-configs")
    status = 400 if form.errors else 200
    context = {"config": config, "title": title, "form": form}
    return render(request, "opie/model_config_form.html", context, status=status)


@login_required
@require_POST
def model_config_delete(request: AuthedRequest, config_id: int) -> HttpResponse:
    """Delete a model config no agent uses."""
    config = services.model_config_get(user=request.user, config_id=config_id)
    try:
        services.model_config_delete(user=request.user, config_id=config.pk)
    except ProtectedError:
        messages.error(
            request, f"“{config.name}” is used by agents: give them another model first."
        )
    else:
        messages.success(request, f"Model config “{config.name}” deleted.")
    return redirect("opie:model-configs")


def _saved(request: AuthedRequest, form: ModelConfigForm, config: ModelConfig | None) -> bool:
    try:
        saved = services.model_config_save(
            user=request.user,
            data=form.service_data(),
            config_id=config.pk if config else None,
        )
    except ValidationError as exc:
        form.add_service_errors(exc)
        return False
    messages.success(request, f"Model config “{saved.name}” saved.")
    return True
