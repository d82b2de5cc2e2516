from __future__ import annotations

from django.contrib import admin
from django.db import transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from apps.accounts.audit import acting_user, audit_record, client_ip
from apps.accounts.models import AuditEvent
from apps.opie.models import Agent, ChatSession, KnowledgeBase, KnowledgeDocument, ModelConfig
from apps.opie.services import agent_details


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "provider", "model_id", "api_key_env", "updated_at")
    list_filter = ("provider",)
    search_fields = ("name", "model_id", "owner__email")
    autocomplete_fields = ("owner",)


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "agent_id",
        "owner",
        "model_config",
        "is_global",
        "is_active",
        "updated_at",
    )
    list_filter = ("is_active", "is_global", "model_config__provider")
    search_fields = ("name", "agent_id", "description", "owner__email")
    autocomplete_fields = ("owner", "model_config")
    filter_horizontal = ("knowledge_bases",)

    def save_model(
        self, request: HttpRequest, obj: Agent, form: ModelForm[Agent], change: bool
    ) -> None:
        """Save, and record the change in the audit log."""
        super().save_model(request, obj, form, change)
        audit_record(
            actor=acting_user(request),
            action=AuditEvent.Action.AGENT_UPDATED if change else AuditEvent.Action.AGENT_CREATED,
            target=obj,
            details=agent_details(obj, form.changed_data if change else ()),
            ip=client_ip(request),
        )

    def delete_model(self, request: HttpRequest, obj: Agent) -> None:
        """Delete, recording it first while the agent still has its primary key."""
        self._record_deleted(request, obj)
        super().delete_model(request, obj)

    @transaction.atomic
    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        """The bulk delete action: one audit event per agent."""
        for agent in queryset:
            self._record_deleted(request, agent)
        super().delete_queryset(request, queryset)

    def _record_deleted(self, request: HttpRequest, agent: Agent) -> None:
        audit_record(
            actor=acting_user(request),
            action=AuditEvent.Action.AGENT_DELETED,
            target=agent,
            details=agent_details(agent),
            ip=client_ip(request),
        )


class KnowledgeDocumentInline(admin.TabularInline):
    model = KnowledgeDocument
    fields = ("title", "source", "status", "chunk_count", "error")
    readonly_fields = fields
    extra = 0
    show_change_link = True

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "embedder", "dimensions", "chunk_size", "updated_at")
    list_filter = ("embedder",)
    search_fields = ("name", "owner__email")
    autocomplete_fields = ("owner",)
    inlines = (KnowledgeDocumentInline,)


@admin.register(KnowledgeDocument)
class KnowledgeDocumentAdmin(admin.ModelAdmin):
    list_display = ("title", "knowledge_base", "source", "status", "chunk_count", "created_at")
    list_filter = ("status", "source")
    search_fields = ("title", "knowledge_base__name", "content_hash")
    readonly_fields = ("content_hash", "chunks_done", "chunk_count", "size_bytes", "content_type")


@admin.register(ChatSession)
class ChatSessionAdmin(admin.ModelAdmin):
    list_display = ("title", "session_id", "user", "agent", "updated_at")
    list_filter = ("agent",)
    search_fields = ("title", "session_id", "user__email", "agent__name")
    readonly_fields = ("session_id",)
    autocomplete_fields = ("user", "agent")
