"""The specification's endpoints and the session, run, usage and channel endpoints.

Views are thin: parse with a serializer, call AgentOSService (or a selector or a service of
this package), shape the output. Errors are raised and shaped by `errors.exception_handler`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
from django.db.utils import DatabaseError
from django.http import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.views import APIView

from apps.accounts.audit import client_ip
from apps.accounts.models import User
from apps.opie import selectors, services
from apps.opie.agentos.service import AgentOSService, agent_summary, session_summary
from apps.opie.api.channels import channel_message
from apps.opie.api.exceptions import ServiceUnavailable
from apps.opie.api.pagination import Pagination, paginated_response
from apps.opie.api.serializers import (
    AgentCreateSerializer,
    AgentSerializer,
    SessionDetailSerializer,
    SessionSerializer,
    TurnSerializer,
    agent_id_field,
    message_field,
    session_id_field,
)
from apps.opie.api.streaming import (
    EVENT_STREAM,
    EventStreamRenderer,
    turn_stream_response,
)
from apps.opie.api.throttling import MessageRateThrottle, TokenRateThrottle
from apps.opie.models import Agent, RunRecord

MESSAGE_THROTTLES = [TokenRateThrottle, MessageRateThrottle]
SSE_RESPONSE = OpenApiResponse(
    OpenApiTypes.STR,
    description="Server-Sent Events: run.started, assistant.delta..., tool.call, tool.result, "
    "references, assistant.message, then run.succeeded, run.failed or run.cancelled.",
)


def current_user(request: Request) -> User:
    """The authenticated user of a request that passed IsAuthenticated."""
    user = request.user
    assert isinstance(user, User)  # noqa: S101 - guaranteed by the permission classes
    return user


def validated(serializer_class: type[serializers.Serializer[Any]], data: Any) -> dict[str, Any]:
    """The request data validated by a serializer (a 400 in the error shape otherwise)."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def agent_data(agent: Agent, user: User) -> dict[str, Any]:
    """An agent as `AgentSerializer` shows it: owners also see its instructions and config."""
    own = agent.owner_id == user.pk
    return {
        **agent_summary(agent, user),
        "instructions": agent.instructions if own else "",
        "model_config_id": agent.model_config_id if own else None,
        "is_active": agent.is_active,
    }


class InfoSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    enabled = serializers.BooleanField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    user = inline_serializer(
        "InfoUser", {"id": serializers.IntegerField(), "email": serializers.EmailField()}
    )
    agents = serializers.IntegerField(help_text="Agents you may chat with.")
    sessions = serializers.IntegerField()
    vault_agents_included = serializers.BooleanField()
    cache_ttl = serializers.IntegerField()
    cached_agents = serializers.IntegerField()
    runs = serializers.IntegerField()


class IndexView(APIView):
    """GET /api/v1/agentos/: AgentOS info plus where every endpoint lives."""

    class OutputSerializer(InfoSerializer):
        endpoints = serializers.DictField(child=serializers.URLField())

    ENDPOINTS = (
        "info",
        "agents",
        "send-message",
        "send-message-stream",
        "create-session",
        "sessions",
        "process-message",
        "model-configs",
        "knowledge-bases",
        "usage",
        "tools",
        "health",
    )

    @extend_schema(responses=OutputSerializer, operation_id="agentos_index")
    def get(self, request: Request) -> Response:
        """AgentOS info and the endpoint map."""
        info = AgentOSService(current_user(request)).get_info()
        endpoints = {
            name: reverse(f"agentos-api:{name}", request=request) for name in self.ENDPOINTS
        }
        return Response(self.OutputSerializer({**info, "endpoints": endpoints}).data)


class InfoView(APIView):
    """GET /api/v1/agentos/info/: AgentOS instance info."""

    @extend_schema(responses=InfoSerializer)
    def get(self, request: Request) -> Response:
        """What a client needs to know about this AgentOS instance."""
        return Response(InfoSerializer(AgentOSService(current_user(request)).get_info()).data)


class HealthView(APIView):
    """GET /api/v1/agentos/health/: liveness for load balancers; no token needed."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer[Any]):
        status = serializers.CharField(help_text='"ok"')
        database = serializers.CharField(help_text='"ok"')
        agentos_enabled = serializers.BooleanField()

    @extend_schema(responses=OutputSerializer, auth=[])
    def get(self, request: Request) -> Response:
        """`ok` when the database answers; 503 otherwise."""
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except DatabaseError as exc:
            raise ServiceUnavailable("The database is unreachable.") from exc
        data = {"status": "ok", "database": "ok", "agentos_enabled": settings.AGENTOS_ENABLED}
        return Response(self.OutputSerializer(data).data)


class AgentListView(APIView):
    """GET: the agents you may chat with (yours and vault agents). POST: create an agent."""

    pagination_class = Pagination

    @extend_schema(responses=AgentSerializer(many=True))
    def get(self, request: Request) -> Response:
        """Available agents, paginated."""
        user = current_user(request)
        agents = selectors.agents_for(user).prefetch_related("knowledge_bases")
        return paginated_response(
            request=request,
            view=self,
            items=agents,
            shape=lambda page: AgentSerializer([agent_data(a, user) for a in page], many=True).data,
        )

    @extend_schema(request=AgentCreateSerializer, responses={201: AgentSerializer})
    def post(self, request: Request) -> Response:
        """Create an agent you own; `is_global` (a vault agent) needs staff rights."""
        user = current_user(request)
        agent = services.agent_create(
            user=user,
            data=validated(AgentCreateSerializer, request.data),
            ip=client_ip(request),
        )
        return Response(
            AgentSerializer(agent_data(agent, user)).data, status=status.HTTP_201_CREATED
        )


class SendMessageView(APIView):
    """POST /api/v1/agentos/send-message/: one turn; `"stream": true` answers with SSE."""

    throttle_classes = MESSAGE_THROTTLES
    renderer_classes = [JSONRenderer, EventStreamRenderer]
    always_stream = False

    class InputSerializer(serializers.Serializer[Any]):
        agent_id = agent_id_field()
        message = message_field()
        session_id = session_id_field(
            required=False, allow_null=True, help_text="Continue this session; new when absent."
        )
        stream = serializers.BooleanField(
            default=False, help_text="Answer with Server-Sent Events instead of JSON."
        )

    @extend_schema(
        request=InputSerializer,
        responses={(200, "application/json"): TurnSerializer, (200, EVENT_STREAM): SSE_RESPONSE},
    )
    def post(self, request: Request) -> HttpResponseBase:
        """Send a message; the answer carries content, ids, usage, tool calls and references."""
        data = validated(self.InputSerializer, request.data)
        service = AgentOSService(current_user(request))
        agent_id, message, session_id = data["agent_id"], data["message"], data.get("session_id")
        if self.always_stream or data["stream"] or request.accepted_media_type == EVENT_STREAM:
            return turn_stream_response(service, agent_id, message, session_id)
        result = service.send_message(agent_id, session_id, message)
        return Response(TurnSerializer(result).data)


class SendMessageStreamView(SendMessageView):
    """POST /api/v1/agentos/send-message/stream/: the same turn, always as Server-Sent Events."""

    always_stream = True

    @extend_schema(
        request=SendMessageView.InputSerializer, responses={(200, EVENT_STREAM): SSE_RESPONSE}
    )
    def post(self, request: Request) -> HttpResponseBase:
        """Stream a turn as events, the first delta as soon as the model produces it."""
        return super().post(request)


class CreateSessionView(APIView):
    """POST /api/v1/agentos/create-session/: an empty session with an agent."""

    class InputSerializer(serializers.Serializer[Any]):
        agent_id = agent_id_field()
        title = serializers.CharField(max_length=200, allow_blank=True, required=False)

    @extend_schema(request=InputSerializer, responses={201: SessionSerializer})
    def post(self, request: Request) -> Response:
        """Start a session."""
        data = validated(self.InputSerializer, request.data)
        session = AgentOSService(current_user(request)).create_session(
            data["agent_id"], data.get("title", "")
        )
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)


class SessionListView(APIView):
    """GET /api/v1/agentos/sessions/: your sessions, newest first."""

    pagination_class = Pagination

    class FilterSerializer(serializers.Serializer[Any]):
        agent_id = agent_id_field(required=False)

    @extend_schema(
        parameters=[
            OpenApiParameter("agent_id", str, description="Only sessions with this agent.")
        ],
        responses=SessionSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        """Sessions, paginated, optionally of one agent."""
        filters = validated(self.FilterSerializer, request.query_params)
        sessions = selectors.sessions_for(current_user(request), filters.get("agent_id"))
        return paginated_response(
            request=request,
            view=self,
            items=sessions,
            shape=lambda page: (
                SessionSerializer([session_summary(s) for s in page], many=True).data
            ),
        )


class SessionDetailView(APIView):
    """GET a session with its messages; PATCH renames it; DELETE removes it and its history."""

    class RenameSerializer(serializers.Serializer[Any]):
        title = serializers.CharField(max_length=200)

    @extend_schema(responses=SessionDetailSerializer)
    def get(self, request: Request, session_id: str) -> Response:
        """The session and its transcript."""
        session = AgentOSService(current_user(request)).get_session(session_id)
        return Response(SessionDetailSerializer(session).data)

    @extend_schema(request=RenameSerializer, responses=SessionSerializer)
    def patch(self, request: Request, session_id: str) -> Response:
        """Rename the session."""
        data = validated(self.RenameSerializer, request.data)
        session = AgentOSService(current_user(request)).rename_session(session_id, data["title"])
        return Response(SessionSerializer(session).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, session_id: str) -> Response:
        """Delete the session."""
        AgentOSService(current_user(request)).delete_session(session_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RunCancelView(APIView):
    """POST /api/v1/agentos/runs/{run_id}/cancel/: ask a running turn of yours to stop."""

    class OutputSerializer(serializers.Serializer[Any]):
        run_id = serializers.CharField()
        cancelled = serializers.BooleanField(help_text="False when the run was no longer running.")

    @extend_schema(request=None, responses=OutputSerializer)
    def post(self, request: Request, run_id: str) -> Response:
        """Cancel a run."""
        cancelled = AgentOSService(current_user(request)).cancel_run(run_id)
        return Response(self.OutputSerializer({"run_id": run_id, "cancelled": cancelled}).data)


class ProcessMessageView(APIView):
    """POST /api/v1/agentos/process-message/: a message from an external channel.

    The same participant always continues the same session (a new one only when another
    agent is asked for), so a messaging service only has to pass its participant id.
    """

    throttle_classes = MESSAGE_THROTTLES

    class InputSerializer(serializers.Serializer[Any]):
        participant_id = serializers.CharField(max_length=128)
        message = message_field()
        phone_number = serializers.RegexField(
            r"^\+?[0-9 ()./-]{3,31}$", max_length=32, required=False, allow_blank=True
        )
        agent_id = agent_id_field(required=False, allow_null=True)

    class OutputSerializer(serializers.Serializer[Any]):
        response = serializers.CharField(allow_blank=True, help_text="The agent's answer.")
        state = inline_serializer(
            "ProcessMessageState",
            {
                "participant_id": serializers.CharField(),
                "session_id": serializers.CharField(),
                "agent_id": serializers.CharField(),
                "status": serializers.ChoiceField(choices=RunRecord.Status.choices),
                "new_session": serializers.BooleanField(),
            },
        )
        metadata = inline_serializer(
            "ProcessMessageMetadata",
            {
                "run_id": serializers.CharField(allow_blank=True),
                "phone_number": serializers.CharField(allow_blank=True),
                "usage": serializers.DictField(child=serializers.IntegerField()),
                "tool_calls": serializers.ListField(child=serializers.DictField()),
                "references": serializers.ListField(child=serializers.DictField()),
                "error": serializers.CharField(allow_null=True),
                "model": serializers.CharField(allow_blank=True),
                "duration_ms": serializers.IntegerField(),
            },
        )

    @extend_schema(request=InputSerializer, responses=OutputSerializer)
    def post(self, request: Request) -> Response:
        """Run the participant's turn and answer {"response", "state", "metadata"}."""
        data = validated(self.InputSerializer, request.data)
        result = channel_message(
            user=current_user(request),
            participant_id=data["participant_id"],
            message=data["message"],
            phone_number=data.get("phone_number", ""),
            agent_id=data.get("agent_id"),
        )
        return Response(self.OutputSerializer(result).data)
