"""Serializers shared by several endpoints; one-off ones live nested in their view."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from apps.opie.agentos.service import SESSION_ID
from apps.opie.models import AGENT_ID, KnowledgeBase, KnowledgeDocument, ModelConfig, RunRecord

PUBLIC_ID_MAX = 64
PUBLIC_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


def agent_id_field(**kwargs: Any) -> serializers.RegexField:
    """An agent's public id as a request field."""
    return serializers.RegexField(
        PUBLIC_ID,
        max_length=PUBLIC_ID_MAX,
        error_messages={"invalid": "Use letters, digits and -_.: (at most 64)."},
        **kwargs,
    )


def session_id_field(**kwargs: Any) -> serializers.RegexField:
    """A session id as a request field (letters, digits and -_.:)."""
    return serializers.RegexField(
        SESSION_ID.pattern,
        max_length=PUBLIC_ID_MAX,
        error_messages={"invalid": "Use letters, digits and -_.: (at most 64)."},
        **kwargs,
    )


def message_field(**kwargs: Any) -> serializers.CharField:
    """A user message, at most AGENTOS_MAX_MESSAGE_CHARS characters."""
    # Kept as sent: leading spaces and newlines can matter to the model.
    return serializers.CharField(
        max_length=settings.AGENTOS_MAX_MESSAGE_CHARS, trim_whitespace=False, **kwargs
    )


class UsageSerializer(serializers.Serializer[Any]):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class ToolCallSerializer(serializers.Serializer[Any]):
    id = serializers.CharField(allow_null=True)
    name = serializers.CharField(allow_null=True)
    arguments = serializers.JSONField()
    result = serializers.JSONField(allow_null=True)
    error = serializers.BooleanField()


class TurnSerializer(serializers.Serializer[Any]):
    """The outcome of one turn: the answer, its ids, usage, tool calls and references."""

    content = serializers.CharField(allow_blank=True)
    session_id = serializers.CharField()
    run_id = serializers.CharField()
    agent_id = serializers.CharField()
    status = serializers.ChoiceField(choices=RunRecord.Status.choices)
    error = serializers.CharField(allow_null=True, required=False)
    usage = UsageSerializer()
    model = serializers.CharField(allow_blank=True)
    duration_ms = serializers.IntegerField()
    tool_calls = ToolCallSerializer(many=True)
    references = serializers.ListField(child=serializers.DictField())


class NamedRefSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class AgentModelSerializer(serializers.Serializer[Any]):
    provider = serializers.CharField()
    model_id = serializers.CharField(allow_blank=True)


class AgentSerializer(serializers.Serializer[Any]):
    """An agent as its reader may see it: owners also get instructions and config."""

    agent_id = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField(allow_blank=True)
    instructions = serializers.CharField(
        allow_blank=True, help_text="Empty unless you own the agent."
    )
    tools = serializers.ListField(child=serializers.CharField())
    knowledge_bases = NamedRefSerializer(many=True)
    model = AgentModelSerializer()
    model_config_id = serializers.IntegerField(
        allow_null=True, help_text="Null for the built-in local model (and for others' agents)."
    )
    is_global = serializers.BooleanField(help_text="A vault agent, shared with every user.")
    is_active = serializers.BooleanField()
    editable = serializers.BooleanField(help_text="Whether you may change or delete it.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class AgentWriteSerializer(serializers.Serializer[Any]):
    """The writable fields of an agent."""

    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=2_000, allow_blank=True, required=False)
    instructions = serializers.CharField(max_length=20_000, allow_blank=True, required=False)
    model_config_id = serializers.IntegerField(
        allow_null=True,
        required=False,
        min_value=1,
        max_value=2**63 - 1,
        help_text="One of your model configs; null for the built-in local model.",
    )
    tools = serializers.ListField(
        child=serializers.CharField(max_length=100), max_length=50, required=False
    )
    knowledge_base_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        max_length=50,
        required=False,
    )
    is_active = serializers.BooleanField(required=False)
    is_global = serializers.BooleanField(
        required=False, help_text="Publish as a vault agent (staff only)."
    )


class AgentCreateSerializer(AgentWriteSerializer):
    agent_id = serializers.RegexField(
        AGENT_ID.regex,
        required=False,
        max_length=PUBLIC_ID_MAX,
        error_messages={"invalid": str(AGENT_ID.message)},
        help_text="Optional stable id (3-64 of a-z 0-9 - _); generated when absent.",
    )


class SessionSerializer(serializers.Serializer[Any]):
    session_id = serializers.CharField()
    agent_id = serializers.CharField()
    agent_name = serializers.CharField()
    title = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class MessageSerializer(serializers.Serializer[Any]):
    role = serializers.ChoiceField(choices=["user", "assistant"])
    content = serializers.CharField(allow_blank=True)
    run_id = serializers.CharField(allow_null=True)
    created_at = serializers.IntegerField(allow_null=True, help_text="Unix time.")
    status = serializers.CharField(allow_blank=True, required=False)
    tool_calls = ToolCallSerializer(many=True, required=False)
    references = serializers.ListField(child=serializers.DictField(), required=False)
    usage = UsageSerializer(required=False)


class SessionDetailSerializer(SessionSerializer):
    messages = MessageSerializer(many=True)


class ModelConfigSerializer(serializers.ModelSerializer[ModelConfig]):
    """A model config; `api_key_env` names an environment variable, the key is never stored."""

    class Meta:
        model = ModelConfig
        fields = (
            "id",
            "name",
            "provider",
            "model_id",
            "base_url",
            "api_key_env",
            "temperature",
            "max_tokens",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("id", "created_at", "updated_at")
        # Uniqueness per owner is checked by the model when saving (the owner is not a field).
        validators: list[Any] = []


class KnowledgeBaseSerializer(serializers.ModelSerializer[KnowledgeBase]):
    document_count = serializers.SerializerMethodField()

    class Meta:
        model = KnowledgeBase
        fields = (
            "id",
            "name",
            "description",
            "embedder",
            "embedder_model",
            "dimensions",
            "chunk_size",
            "chunk_overlap",
            "document_count",
            "created_at",
            "updated_at",
        )
        read_only_fields = ("id", "document_count", "created_at", "updated_at")
        validators: list[Any] = []

    def get_document_count(self, kb: KnowledgeBase) -> int:
        """How many documents the knowledge base holds."""
        return int(getattr(kb, "document_count", None) or kb.documents.count())


class DocumentSerializer(serializers.ModelSerializer[KnowledgeDocument]):
    progress = serializers.IntegerField(read_only=True, help_text="Percent of chunks embedded.")

    class Meta:
        model = KnowledgeDocument
        fields = (
            "id",
            "knowledge_base",
            "title",
            "source",
            "url",
            "content_type",
            "size_bytes",
            "status",
            "progress",
            "chunks_done",
            "chunk_count",
            "error",
            "created_at",
            "updated_at",
        )
        read_only_fields = fields
