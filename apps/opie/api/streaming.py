"""Server-Sent Events for a turn.

The message endpoints are plain DRF views: authentication, throttling, parsing and validation
run in the request's thread, and the response they return streams the turn from an async
iterator, which the ASGI server runs on the event loop, each event sent the moment the model
produces it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from apps.opie.agentos import events
from apps.opie.agentos.config import AgentsUnavailable, ensure_enabled
from apps.opie.agentos.db import release_connections
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
    # The request's connection goes back to the pool now, not when the answer has streamed.
    release_connections()
    stream = service.astream_message(agent_id, message, session.session_id)
    response = StreamingHttpResponse(sse_frames(stream), content_type=EVENT_STREAM)
    response["Cache-Control"] = "no-cache"
    # Proxies such as nginx would otherwise hold the events back until the turn ends.
    response["X-Accel-Buffering"] = "no"
    return response
