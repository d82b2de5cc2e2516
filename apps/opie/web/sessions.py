"""Session pages: the transcript, rename, delete, and export as Markdown or JSON."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from apps.opie.agentos.service import AgentOSService, InvalidInput
from apps.opie.forms import RenameForm
from apps.opie.web.common import AuthedRequest, not_found
from apps.opie.web.exports import session_markdown
from apps.opie.web.rendering import present_message

EXPORTS = {"md": "text/markdown; charset=utf-8", "json": "application/json"}


def _detail(
    request: AuthedRequest, session_id: str, form: RenameForm | None = None
) -> HttpResponse:
    session = AgentOSService(request.user).get_session(session_id)
    form = form or RenameForm(initial={"title": session["title"]})
    context = {
        "session": session,
        "transcript": [present_message(m) for m in session["messages"]],
        "form": form,
    }
    return render(request, "opie/session.html", context, status=400 if form.errors else 200)


@login_required
@require_GET
def session_detail(request: AuthedRequest, session_id: str) -> HttpResponse:
    """A session's transcript with its tool steps and citations."""
    return _detail(request, session_id)


@login_required
@require_POST
def session_rename(request: AuthedRequest, session_id: str) -> HttpResponse:
    """Give a session a new title."""
    form = RenameForm(request.POST)
    if not form.is_valid():
        return _detail(request, session_id, form)
    try:
        AgentOSService(request.user).rename_session(session_id, form.cleaned_data["title"])
    except InvalidInput as exc:
        form.add_error("title", str(exc))
        return _detail(request, session_id, form)
    messages.success(request, "Session renamed.")
    return redirect("opie:session", session_id=session_id)


@login_required
@require_POST
def session_delete(request: AuthedRequest, session_id: str) -> HttpResponse:
    """Delete a session and its history."""
    AgentOSService(request.user).delete_session(session_id)
    messages.success(request, "Session deleted.")
    return redirect("opie:dashboard")


@login_required
@require_GET
def session_export(request: AuthedRequest, session_id: str, fmt: str) -> HttpResponse:
    """Download a session as Markdown or JSON."""
    if fmt not in EXPORTS:
        return not_found(request, f"There is no {fmt!r} export.")
    session = AgentOSService(request.user).get_session(session_id)
    if fmt == "md":
        body = session_markdown(session)
    else:
        body = json.dumps(session, indent=2, ensure_ascii=False, default=str) + "\n"
    response = HttpResponse(body, content_type=EXPORTS[fmt])
    response["Content-Disposition"] = f'attachment; filename="session-{session_id}.{fmt}"'
    return response
