"""Server-Sent Events for a turn, and the async door the message endpoints are served through.

DRF is synchronous, so a message endpoint is an async view whose DRF part (authentication,
throttling, parsing, validation) runs in a worker thread; the turn itself then streams on the
event loop, each event sent the moment the model produces it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from rest_framework.renderers import BaseRenderer
from rest_framework.views import APIView

from apps.opie.agentos import events
from apps.opie.agentos.config import AgentsUnavailable, ensure_enabled
from apps.opie.agentos.db import threaded
from apps.opie.agentos.events import AgentEvent
from apps.opie.agentos.providers import ProviderError
from apps.opie.agentos.service import AgentOSService, ServiceError
from apps.opie.api.errors import SERVER_ERROR_MESSAGE

logger = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"


class EventStreamRenderer(BaseRenderer):
    """Lets `Accept: text/event-stream` through content negotiation; the view streams itself."""

    media_type = EVENT_STREAM
    format = "sse"
    charset = None

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        """A single `message` event holding the data (only reached by non-streamed answers)."""
        return (
            AgentEvent("message", data if isinstance(data, dict) else {"data": data})
            .as_sse()
            .encode()
        )


class AsyncAPIView(APIView):
    """An APIView served as an async view, so its response may stream on the event loop."""

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., Any]:  # type: ignore[override]
        """The async view; it keeps DRF's attributes (`cls`, `csrf_exempt`) for URLs and schema."""
        sync_view = super().as_view(**initkwargs)
        # The connection goes back to the pool before the answer starts streaming.
        in_thread = threaded(sync_view, pooled=False)

        async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            response: HttpResponseBase = await in_thread(request, *args, **kwargs)
            return response

        functools.update_wrapper(view, sync_view)
        return view


async def sse_frames(stream: AsyncIterator[AgentEvent]) -> AsyncIterator[str]:
    """The events as SSE frames; a failure ends the stream with a `run.failed` event."""
    try:
        async for event in stream:
            yield event.as_sse()
    except (ServiceError, AgentsUnavailable, ProviderError) as exc:
        yield AgentEvent(events.FAILED, {"status": "failed", "error": str(exc)}).as_sse()
    except Exception:
        logger.exception("A streamed turn failed")
        yield AgentEvent(
            events.FAILED, {"status": "failed", "error": SERVER_ERROR_MESSAGE}
        ).as_sse()


def turn_stream_response(
    service: AgentOSService, agent_id: str, message: str, session_id: str | None
) -> StreamingHttpResponse:
    """Start a turn and answer with its events; bad ids are refused before the stream opens."""
    ensure_enabled()
    _agent, session = service.prepare_turn(agent_id, session_id, message)
    stream = service.astream_message(agent_id, message, session.session_id)
    response = StreamingHttpResponse(sse_frames(stream), content_type=EVENT_STREAM)
    response["Cache-Control"] = "no-cache"
    # Proxies such as nginx would otherwise hold the events back until the turn ends.
    response["X-Accel-Buffering"] = "no"
    return response
