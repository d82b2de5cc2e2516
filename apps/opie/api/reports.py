"""Session export (Markdown or JSON) and token usage."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.opie.agentos.service import AgentOSService
from apps.opie.api.serializers import SessionDetailSerializer
from apps.opie.api.usage import usage_summary
from apps.opie.api.views import current_user, validated

MARKDOWN = "text/markdown"


def session_markdown(session: Mapping[str, Any]) -> str:
    """A session transcript as Markdown, tool calls included."""
    lines = [
        f"# {session.get('title') or 'Untitled session'}",
        "",
        f"- Agent: {session['agent_name']} (`{session['agent_id']}`)",
        f"- Session: `{session['session_id']}`",
        f"- Started: {session['created_at']}",
        "",
    ]
    for message in session.get("messages", []):
        when = message.get("created_at")
        stamp = f" · {datetime.fromtimestamp(when, UTC).isoformat()}" if when else ""
        lines += [f"## {message['role'].capitalize()}{stamp}", "", message["content"] or "", ""]
        for call in message.get("tool_calls", []):
            arguments = json.dumps(call["arguments"], ensure_ascii=False)
            lines.append(f"> Tool `{call['name']}` {arguments} -> {call['result']}")
        if message.get("tool_calls"):
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


class MarkdownRenderer(BaseRenderer):
    """`?format=markdown` or `Accept: text/markdown` on the export endpoint."""

    media_type = MARKDOWN
    format = "markdown"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        """The session as Markdown."""
        return session_markdown(data).encode()


class SessionExportView(APIView):
    """GET /api/v1/agentos/sessions/{session_id}/export/: the transcript as Markdown or JSON."""

    renderer_classes = [JSONRenderer, MarkdownRenderer]

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "format",
                str,
                enum=["json", "markdown"],
                description="Default: by Accept, else json.",
            )
        ],
        responses={
            (200, "application/json"): SessionDetailSerializer,
            (200, MARKDOWN): OpenApiResponse(OpenApiTypes.STR, description="The transcript."),
        },
    )
    def get(self, request: Request, session_id: str) -> Response:
        """Download a session."""
        session = AgentOSService(current_user(request)).get_session(session_id)
        extension = "md" if request.accepted_media_type == MARKDOWN else "json"
        return Response(
            SessionDetailSerializer(session).data,
            headers={
                "Content-Disposition": f'attachment; filename="session-{session_id}.{extension}"'
            },
        )


class UsageTotalsSerializer(serializers.Serializer[Any]):
    runs = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class UsageDaySerializer(UsageTotalsSerializer):
    date = serializers.DateField()


class UsageAgentSerializer(UsageTotalsSerializer):
    agent_id = serializers.CharField(allow_null=True, help_text="Null for a deleted agent.")
    name = serializers.CharField()


class UsageModelSerializer(UsageTotalsSerializer):
    provider = serializers.CharField(allow_blank=True)
    model = serializers.CharField(allow_blank=True)


class UsageView(APIView):
    """GET /api/v1/agentos/usage/: your tokens per day, per agent and per model."""

    class FilterSerializer(serializers.Serializer[Any]):
        days = serializers.IntegerField(min_value=1, max_value=366, default=30)

    class OutputSerializer(serializers.Serializer[Any]):
        days = serializers.IntegerField()
        since = serializers.DateField()
        totals = UsageTotalsSerializer()
        by_day = UsageDaySerializer(many=True)
        by_agent = UsageAgentSerializer(many=True)
        by_model = UsageModelSerializer(many=True)

    @extend_schema(
        parameters=[OpenApiParameter("days", int, description="1-366, default 30.")],
        responses=OutputSerializer,
    )
    def get(self, request: Request) -> Response:
        """Usage of the last `days` days."""
        days = validated(self.FilterSerializer, request.query_params)["days"]
        summary = usage_summary(user=current_user(request), days=days)
        return Response(self.OutputSerializer(summary).data)
