"""The agent product's data: model configs, agents, knowledge bases, documents and sessions."""

from __future__ import annotations

import re
import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from apps.opie.agentos import versions
from apps.opie.agentos.tools import tool_names

ENV_VAR_NAME = RegexValidator(
    r"^[A-Z_][A-Z0-9_]*$", "Use the name of an environment variable, like OPENAI_API_KEY."
)
AGENT_ID = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]{2,63}$",
    "Use 3-64 lowercase letters, digits, dashes or underscores, starting with a letter or digit.",
)


def new_agent_id() -> str:
    """A fresh public agent id, e.g. `agent-3f9c2a1b7d4e`."""
    return f"agent-{uuid.uuid4().hex[:12]}"


def new_session_id() -> str:
    """A fresh session id (the id agno stores the session under)."""
    return str(uuid.uuid4())


class TimeStamped(models.Model):
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class ModelConfig(TimeStamped):
    """Which LLM an agent talks to; API keys stay in the environment, named by `api_key_env`."""

    class Provider(models.TextChoices):
        LOCAL = "local", "Local (llama.cpp, no key)"
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OLLAMA = "ollama", "Ollama"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_configs"
    )
    name = models.CharField(max_length=100)
    provider = models.CharField(max_length=32, choices=Provider, default=Provider.LOCAL)
    model_id = models.CharField(max_length=200, blank=True, help_text="e.g. gpt-4o-mini")
    base_url = models.URLField(blank=True, help_text="Required for OpenAI-compatible servers.")
    api_key_env = models.CharField(
        "API key variable",
        max_length=100,
        blank=True,
        validators=[ENV_VAR_NAME],
        help_text="Name of the environment variable holding the key, never the key itself.",
    )
    temperature = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)]
    )
    max_tokens = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(200_000)]
    )

    class Meta:
        ordering = ("name",)
        constraints = [
            models.UniqueConstraint(fields=("owner", "name"), name="unique_model_config_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider}{':' + self.model_id if self.model_id else ''})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        versions.bump(self.agents.values_list("pk", flat=True))

    def clean(self) -> None:
        """Check the fields a provider needs are present."""
        if self.provider == self.Provider.OPENAI_COMPATIBLE and not self.base_url:
            raise ValidationError({"base_url": "An OpenAI-compatible server needs a base URL."})
        needs_model = {self.Provider.OPENAI, self.Provider.ANTHROPIC, self.Provider.OLLAMA}
        if self.provider in needs_model and not self.model_id:
            raise ValidationError(
                {"model_id": f"Name the {self.get_provider_display()} model to use."}
            )
        if re.match(r"^(sk-|sk_|xai-)", self.api_key_env or ""):
            raise ValidationError({"api_key_env": "Put the key in the environment, not here."})


class KnowledgeBase(TimeStamped):
    """A searchable set of documents, embedded into pgvector."""

    class Embedder(models.TextChoices):
        LOCAL = "local", "Local all-MiniLM-L6-v2 (384 dimensions)"
        OPENAI = "openai", "OpenAI"
        OLLAMA = "ollama", "Ollama"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="knowledge_bases"
    )
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    embedder = models.CharField(max_length=32, choices=Embedder, default=Embedder.LOCAL)
    embedder_model = models.CharField(max_length=200, blank=True)
    dimensions = models.PositiveIntegerField(
        default=384, validators=[MinValueValidator(8), MaxValueValidator(4096)]
    )
    chunk_size = models.PositiveIntegerField(
        default=1000,
        help_text="Characters per chunk.",
        validators=[MinValueValidator(100), MaxValueValidator(20_000)],
    )
    chunk_overlap = models.PositiveIntegerField(default=150, validators=[MaxValueValidator(5_000)])
    # Search embeds queries with what the stored vectors were made with, so an edited embedder
    # keeps search working until `agentos_reembed` rebuilds the vectors.
    indexed_embedder = models.CharField(
        max_length=300,
        blank=True,
        editable=False,
        help_text="Embedder of the stored vectors (kind:dimensions:model); empty until indexed.",
    )

    class Meta:
        ordering = ("name",)
        constraints = [
            models.UniqueConstraint(fields=("owner", "name"), name="unique_knowledge_base_name"),
            models.CheckConstraint(
                condition=models.Q(chunk_overlap__lt=models.F("chunk_size")),
                name="chunk_overlap_below_size",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        versions.bump(self.agents.values_list("pk", flat=True))

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        versions.bump(self.agents.values_list("pk", flat=True))
        return super().delete(*args, **kwargs)

    def clean(self) -> None:
        """Overlap must leave each chunk some new text."""
        sizes_given = self.chunk_overlap is not None and self.chunk_size is not None
        if sizes_given and self.chunk_overlap >= self.chunk_size:
            raise ValidationError({"chunk_overlap": "Overlap must be smaller than chunk size."})
        if self.embedder == self.Embedder.LOCAL and self.dimensions != 384:
            raise ValidationError({"dimensions": "The local embedder has 384 dimensions."})


class KnowledgeDocument(TimeStamped):
    """One document of a knowledge base and where its ingestion stands."""

    class Source(models.TextChoices):
        FILE = "file", "File"
        TEXT = "text", "Text"
        URL = "url", "URL"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    knowledge_base = models.ForeignKey(
        KnowledgeBase, on_delete=models.CASCADE, related_name="documents"
    )
    source = models.CharField(max_length=16, choices=Source)
    title = models.CharField(max_length=255)
    url = models.URLField(max_length=2000, blank=True)
    file = models.FileField(upload_to="knowledge/%Y/%m/", blank=True)
    text = models.TextField(blank=True, help_text="Pasted text, for text documents.")
    content_type = models.CharField(max_length=100, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status, default=Status.QUEUED)
    error = models.TextField(blank=True)
    chunks_done = models.PositiveIntegerField(default=0)
    chunk_count = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [models.Index(fields=("knowledge_base", "status"))]
        constraints = [
            models.UniqueConstraint(
                fields=("knowledge_base", "content_hash"),
                condition=~models.Q(content_hash=""),
                name="unique_document_content",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def progress(self) -> int:
        """Percent of chunks embedded."""
        if self.status == self.Status.READY:
            return 100
        return int(100 * self.chunks_done / self.chunk_count) if self.chunk_count else 0


class Agent(TimeStamped):
    """An agent a user defined; Opie turns it into an agno Agent."""

    agent_id = models.CharField(
        max_length=64,
        unique=True,
        default=new_agent_id,
        validators=[AGENT_ID],
        help_text="Stable public id, used in URLs and by agno.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agents"
    )
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    instructions = models.TextField(blank=True)
    model_config = models.ForeignKey(
        ModelConfig,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="agents",
        help_text="Empty means the built-in local model.",
    )
    tools = models.JSONField(default=list, blank=True, help_text="Names of registered tools.")
    knowledge_bases = models.ManyToManyField(KnowledgeBase, blank=True, related_name="agents")
    is_global = models.BooleanField(
        "vault agent", default=False, help_text="Shared with every user (read-only for them)."
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ("name",)
        indexes = [models.Index(fields=("owner", "is_active")), models.Index(fields=("is_global",))]

    def __str__(self) -> str:
        return f"{self.name} ({self.agent_id})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        versions.bump([self.pk])

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        versions.bump([self.pk])
        return super().delete(*args, **kwargs)

    def clean(self) -> None:
        """Tools must be registered names; a model config must belong to the same owner."""
        if not isinstance(self.tools, list) or not all(isinstance(t, str) for t in self.tools):
            raise ValidationError({"tools": "Give a list of tool names."})
        unknown = sorted(set(self.tools) - set(tool_names()))
        if unknown:
            raise ValidationError(
                {"tools": f"Unknown tools: {', '.join(unknown)}. Known: {', '.join(tool_names())}."}
            )
        config = self.model_config if self.model_config_id else None
        if config is not None and self.owner_id and config.owner_id != self.owner_id:
            raise ValidationError({"model_config": "Choose one of your own model configs."})


class ChatSession(TimeStamped):
    """A conversation with an agent; its messages live in agno's session storage."""

    session_id = models.CharField(max_length=64, unique=True, default=new_session_id)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions"
    )
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="sessions")
    title = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ("-updated_at",)
        indexes = [models.Index(fields=("user", "-updated_at"))]

    def __str__(self) -> str:
        return self.title or self.session_id


class RunRecord(models.Model):
    """One agent run: who ran what, on which model, how long it took and what it cost."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    run_id = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="runs"
    )
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, related_name="runs")
    session = models.ForeignKey(
        ChatSession, on_delete=models.SET_NULL, null=True, blank=True, related_name="runs"
    )
    model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=16, choices=Status)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    duration_ms = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=("user", "-created_at")),
            models.Index(fields=("agent", "-created_at")),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} ({self.status})"


class ChannelParticipant(TimeStamped):
    """Someone writing through an external channel (SMS, WhatsApp...): one session each."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="channel_participants"
    )
    participant_id = models.CharField(max_length=128)
    phone_number = models.CharField(max_length=32, blank=True)
    session = models.ForeignKey(
        ChatSession,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="channel_participants",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=("user", "participant_id"), name="unique_channel_participant"
            ),
        ]

    def __str__(self) -> str:
        return self.participant_id
