"""The chat page: sending a message, streaming the answer over SSE, and stopping a run.

Sending is two requests. htmx POSTs the message (CSRF-checked); the view claims the session,
keeps the message in the person's Django session under a one-time token and answers with
the turn's fragment, whose `sse-connect` opens a GET on the stream view. The stream view
takes the message back out and runs it through `AgentOSService.astream_message`, turning
each event into an HTML fragment that htmx swaps in. The Django session (in the database)
holds the message between the two, so it works across processes and with Redis down.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.sessions.backends.base import SessionBase
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST

from apps.accounts.models import User
from apps.opie.agentos import events
from apps.opie.agentos.config import AgentsUnavailable, ensure_enabled
from apps.opie.agentos.events import AgentEvent
from apps.opie.agentos.service import AgentOSService, InvalidInput, NotFound, ServiceError
from apps.opie.forms import ChatForm
from apps.opie.web import reads
from apps.opie.web.common import AuthedRequest, is_htmx, not_found, upload_accept
from apps.opie.web.rendering import (
    present_message,
    present_references,
    present_tool_call,
    render_markdown,
    sse_frame,
)

logger = logging.getLogger(__name__)

PENDING_TURNS = "opie_pending_turns"
# A turn not picked up by its stream within this long was abandoned (tab closed mid-send).
PENDING_TTL = 300
MAX_PENDING = 10
SESSION_HISTORY = 50
GONE = (
    "This answer is no longer streaming here. It is still saved in the session: "
    "reload the page to see it."
)
UNEXPECTED = (
    "Something went wrong while answering. Every completed turn is kept in the session; "
    "send your message again."
)


def _chat_url(agent_id: str, session_id: str | None = None) -> str:
    url = reverse("opie:chat", args=[agent_id])
    return f"{url}?{urlencode({'session': session_id})}" if session_id else url


@login_required
@require_GET
def chat(request: AuthedRequest, agent_id: str) -> HttpResponse:
    """The chat with an agent: history sidebar, transcript, composer and upload."""
    service = AgentOSService(request.user)
    session_id = request.GET.get("session") or None
    agent = service.get_agent(agent_id)
    session = service.get_session(session_id) if session_id else None
    if session is not None and session["agent_id"] != agent["agent_id"]:
        return redirect(_chat_url(session["agent_id"], session["session_id"]))
    unavailable = None
    try:
        ensure_enabled()
    except AgentsUnavailable as exc:
        unavailable = str(exc)
    upload_kbs = reads.uploadable_knowledge_bases(
        request.user, [kb["id"] for kb in agent["knowledge_bases"]]
    )
    context = {
        "agent": agent,
        "session": session,
        "sessions": service.get_sessions(agent_id=agent_id, limit=SESSION_HISTORY),
        "transcript": [present_message(m) for m in session["messages"]] if session else [],
        "upload_kbs": upload_kbs,
        "accept": upload_accept(),
        "documents": reads.recent_documents(request.user, [kb.pk for kb in upload_kbs]),
        "unavailable": unavailable,
    }
    return render(request, "opie/chat.html", context)


def _rejected(request: HttpRequest, agent_id: str, error: str, status: int) -> HttpResponse:
    """A message that was not sent: said in the conversation (htmx) or on the page."""
    if is_htmx(request):
        context = {"error": error}
        return render(request, "opie/partials/_turn_error.html", context, status=status)
    if status == 404:
        return not_found(request, error)
    messages.error(request, error)
    return redirect(_chat_url(agent_id, request.POST.get("session_id") or None))


@login_required
@require_POST
def chat_send(request: AuthedRequest, agent_id: str) -> HttpResponse:
    """Accept a message: answer htmx with the streaming turn, others after the whole turn."""
    form = ChatForm(request.POST)
    if not form.is_valid():
        return _rejected(request, agent_id, str(next(iter(form.errors.values()))[0]), 422)
    message = form.cleaned_data["message"]
    service = AgentOSService(request.user)
    try:
        ensure_enabled()
        agent, session = service.prepare_turn(
            agent_id, form.cleaned_data["session_id"] or None, message
        )
    except NotFound as exc:
        return _rejected(request, agent_id, str(exc), 404)
    except (InvalidInput, AgentsUnavailable) as exc:
        return _rejected(request, agent_id, str(exc), 422)
    if not is_htmx(request):
        return _send_without_streaming(request, service, agent_id, session.session_id, message)
    token = secrets.token_urlsafe(16)
    _stash(request.session, token, agent_id, session.session_id, message)
    context = {
        "agent_id": agent_id,
        "agent_name": agent.name,
        "session_id": session.session_id,
        "message_html": present_message({"role": "user", "content": message})["html"],
        "stream_url": reverse("opie:chat-stream", args=[agent_id, token]),
        "token": token,
        "first_turn": not form.cleaned_data["session_id"],
        "sessions": service.get_sessions(agent_id=agent_id, limit=SESSION_HISTORY),
    }
    response = render(request, "opie/partials/_turn.html", context)
    # A reload then shows this session rather than an empty chat.
    response["HX-Replace-Url"] = _chat_url(agent_id, session.session_id)
    return response


def _send_without_streaming(
    request: AuthedRequest, service: AgentOSService, agent_id: str, session_id: str, message: str
) -> HttpResponse:
    # Without JavaScript the form posts normally: run the whole turn, then show the session.
    result = service.send_message(agent_id, session_id, message)
    if result.get("status") == "failed":
        messages.error(request, result.get("error") or UNEXPECTED)
    return redirect(_chat_url(agent_id, session_id))


def _stash(session: SessionBase, token: str, agent_id: str, session_id: str, text: str) -> None:
    now = time.time()
    pending = {
        key: turn
        for key, turn in session.get(PENDING_TURNS, {}).items()
        if now - turn["at"] < PENDING_TTL
    }
    pending[token] = {"agent_id": agent_id, "session_id": session_id, "message": text, "at": now}
    session[PENDING_TURNS] = dict(list(pending.items())[-MAX_PENDING:])


async def _unstash(session: SessionBase, token: str) -> dict[str, Any] | None:
    pending = dict(await session.aget(PENDING_TURNS, {}))
    turn = pending.pop(token, None)
    if turn is not None:
        await session.aset(PENDING_TURNS, pending)
        if time.time() - turn["at"] >= PENDING_TTL:
            return None
    return turn


@login_required
@require_GET
async def chat_stream(request: HttpRequest, agent_id: str, token: str) -> HttpResponseBase:
    """The answer to a sent message as SSE frames of HTML for htmx to swap in."""
    user = cast(User, await request.auser())
    turn = await _unstash(request.session, token)
    if turn is None or turn["agent_id"] != agent_id:
        # EventSource reconnects after a dropped connection: the turn runs on regardless.
        frames: AsyncIterator[str] = _frames_of(
            [sse_frame("error", _error_html(GONE)), sse_frame("end")]
        )
    else:
        frames = _turn_frames(user, turn)
    response = StreamingHttpResponse(frames, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _frames_of(frames: list[str]) -> AsyncIterator[str]:
    for frame in frames:
        yield frame


async def _turn_frames(user: User, turn: dict[str, Any]) -> AsyncIterator[str]:
    service = AgentOSService(user)
    yield sse_frame("status", _status_html("Thinking…"))
    writing = False
    try:
        async for event in service.astream_message(
            turn["agent_id"], turn["message"], turn["session_id"]
        ):
            if event.type == events.DELTA and not writing:
                writing = True
                yield sse_frame("status", "")
            for frame in _frames_for(event):
                yield frame
    except (ServiceError, AgentsUnavailable) as exc:
        yield sse_frame("status", "")
        yield sse_frame("error", _error_html(str(exc)))
    except Exception:
        logger.exception("Streaming a turn of agent %s failed", turn["agent_id"])
        yield sse_frame("status", "")
        yield sse_frame("error", _error_html(UNEXPECTED))
    yield sse_frame("end")


def _frames_for(event: AgentEvent) -> Iterator[str]:
    data = event.data
    if event.type == events.RUN_STARTED:
        yield sse_frame("run", render_to_string("opie/partials/_stop.html", data))
    elif event.type == events.DELTA:
        # Each delta is escaped text; the finished answer replaces them with rendered Markdown.
        yield sse_frame("delta", f"<span>{escape(data.get('delta') or '')}</span>")
    elif event.type == events.TOOL_CALL:
        yield sse_frame("status", _status_html(f"Running the {data.get('name')} tool…"))
    elif event.type == events.TOOL_RESULT:
        step = render_to_string("opie/partials/_tool_step.html", {"step": present_tool_call(data)})
        yield sse_frame("tool", step)
        yield sse_frame("status", _status_html("Thinking…"))
    elif event.type == events.REFERENCES:
        citations = present_references(data.get("references") or [])
        yield sse_frame(
            "references",
            render_to_string("opie/partials/_citations.html", {"citations": citations}),
        )
    elif event.type in (events.MESSAGE, events.CANCELLED):
        yield sse_frame("message", _answer_html(str(data.get("content") or "")))
    if event.type == events.SUCCEEDED:
        yield sse_frame("done", render_to_string("opie/partials/_usage.html", {"run": data}))
    elif event.type == events.CANCELLED:
        yield sse_frame("status", _status_html("Stopped. The answer so far is kept.", busy=False))
    elif event.type == events.FAILED:
        yield sse_frame("status", "")
        yield sse_frame("error", _error_html(str(data.get("error") or UNEXPECTED)))


def _answer_html(content: str) -> str:
    return f'<div class="answer">{render_markdown(content)}</div>'


def _status_html(text: str, *, busy: bool = True) -> str:
    return f'<span class="status-text{" busy" if busy else ""}">{escape(text)}</span>'


def _error_html(message: str) -> str:
    return render_to_string("opie/partials/_run_error.html", {"error": message})


@login_required
@require_POST
async def run_cancel(request: HttpRequest, run_id: str) -> HttpResponse:
    """Ask one of the user's running runs to stop."""
    user = cast(User, await request.auser())
    try:
        await AgentOSService(user).acancel_run(run_id)
    except NotFound:
        return HttpResponse("That run is not running.", status=404)
    return HttpResponse(status=204)
