"""Resources a product team manages: agents, tools and model configs."""

from __future__ import annotations

import inspect
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.audit import client_ip
from apps.opie import selectors, services
from apps.opie.agentos.tools import tool_registry
from apps.opie.api.pagination import Pagination, paginated_response
from apps.opie.api.serializers import (
    AgentSerializer,
    AgentWriteSerializer,
    ModelConfigSerializer,
)
from apps.opie.api.views import agent_data, current_user, validated


class AgentUpdateSerializer(AgentWriteSerializer):
    """Every field optional: PATCH changes only what it names."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, partial=True, **kwargs)


class AgentDetailView(APIView):
    """GET an agent you may see; PATCH or DELETE one you own (vault agents are read-only)."""

    @extend_schema(responses=AgentSerializer)
    def get(self, request: Request, agent_id: str) -> Response:
        """One agent."""
        user = current_user(request)
        agent = services.visible_agent(user=user, agent_id=agent_id)
        return Response(AgentSerializer(agent_data(agent, user)).data)

    @extend_schema(request=AgentUpdateSerializer, responses=AgentSerializer)
    def patch(self, request: Request, agent_id: str) -> Response:
        """Change an agent you own."""
        user = current_user(request)
        data = validated(AgentUpdateSerializer, request.data)
        agent = services.agent_update(
            user=user, agent_id=agent_id, data=data, ip=client_ip(request)
        )
        return Response(AgentSerializer(agent_data(agent, user)).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, agent_id: str) -> Response:
        """Delete an agent you own, with its sessions."""
        services.agent_delete(user=current_user(request), agent_id=agent_id, ip=client_ip(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class ToolListView(APIView):
    """GET /api/v1/agentos/tools/: the tool names an agent's `tools` may hold."""

    class OutputSerializer(serializers.Serializer[Any]):
        name = serializers.CharField()
        description = serializers.CharField(allow_blank=True)

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        """Registered tools with their descriptions."""
        tools = [
            {"name": name, "description": inspect.getdoc(func) or ""}
            for name, func in sorted(tool_registry().items())
        ]
        return Response(self.OutputSerializer(tools, many=True).data)


class ModelConfigListView(APIView):
    """GET your model configs; POST a new one (name the key's environment variable)."""

    pagination_class = Pagination

    @extend_schema(responses=ModelConfigSerializer(many=True))
    def get(self, request: Request) -> Response:
        """Model configs, paginated."""
        return paginated_response(
            request=request,
            view=self,
            items=selectors.model_configs_for(current_user(request)),
            shape=lambda page: ModelConfigSerializer(page, many=True).data,
        )

    @extend_schema(request=ModelConfigSerializer, responses={201: ModelConfigSerializer})
    def post(self, request: Request) -> Response:
        """Create a model config."""
        data = validated(ModelConfigSerializer, request.data)
        config = services.model_config_save(user=current_user(request), data=data)
        return Response(ModelConfigSerializer(config).data, status=status.HTTP_201_CREATED)


class ModelConfigDetailView(APIView):
    """GET, PATCH or DELETE one of your model configs (409 while an agent uses it)."""

    @extend_schema(responses=ModelConfigSerializer)
    def get(self, request: Request, pk: int) -> Response:
        """One model config."""
        config = services.model_config_get(user=current_user(request), config_id=pk)
        return Response(ModelConfigSerializer(config).data)

    @extend_schema(request=ModelConfigSerializer(partial=True), responses=ModelConfigSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        """Change a model config."""
        serializer = ModelConfigSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        config = services.model_config_save(
            user=current_user(request), data=dict(serializer.validated_data), config_id=pk
        )
        return Response(ModelConfigSerializer(config).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        """Delete a model config no agent uses."""
        services.model_config_delete(user=current_user(request), config_id=pk)
        return Response(status=status.HTTP_204_NO_CONTENT)
