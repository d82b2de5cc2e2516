from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.db import transaction
from django.db.models import QuerySet
from django.forms import ModelForm
from django.http import HttpRequest

from apps.accounts.audit import acting_user, audit_record, client_ip
from apps.accounts.models import APIToken, AuditEvent, User
from apps.accounts.tokens import token_details


class UserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email",)


class UserEditForm(UserChangeForm):
    class Meta:
        model = User
        fields = ("email", "name")


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    add_form = UserCreationForm
    form = UserEditForm
    ordering = ("email",)
    list_display = ("email", "name", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_superuser", "is_active")
    search_fields = ("email", "name")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("name",)}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    """Tokens are issued by their owners; the admin may only inspect and revoke them."""

    list_display = (
        "name",
        "user",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("revoked_at", "expires_at")
    search_fields = ("name", "prefix", "user__email")
    readonly_fields = ("user", "name", "prefix", "created_at", "last_used_at")
    fields = ("user", "name", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(
        self, request: HttpRequest, obj: APIToken, form: ModelForm[APIToken], change: bool
    ) -> None:
        """Save, and record a revocation (or any other change) in the audit log."""
        super().save_model(request, obj, form, change)
        if not form.changed_data:
            return
        revoked = "revoked_at" in form.changed_data and obj.revoked_at is not None
        audit_record(
            actor=acting_user(request),
            action=AuditEvent.Action.TOKEN_REVOKED if revoked else AuditEvent.Action.TOKEN_UPDATED,
            target=obj,
            details={**token_details(obj), "fields": sorted(form.changed_data)},
            ip=client_ip(request),
        )

    def delete_model(self, request: HttpRequest, obj: APIToken) -> None:
        """Delete, recording it first while the token still has its primary key."""
        self._record_deleted(request, obj)
        super().delete_model(request, obj)

    @transaction.atomic
    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[APIToken]) -> None:
        """The bulk delete action: one audit event per token."""
        for token in queryset.select_related("user"):
            self._record_deleted(request, token)
        super().delete_queryset(request, queryset)

    def _record_deleted(self, request: HttpRequest, token: APIToken) -> None:
        audit_record(
            actor=acting_user(request),
            action=AuditEvent.Action.TOKEN_DELETED,
            target=token,
            details=token_details(token),
            ip=client_ip(request),
        )


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log, read-only: a record anyone could edit would prove nothing."""

    list_display = ("created_at", "action", "actor_email", "target_type", "target_id", "ip_address")
    list_filter = ("action", "target_type")
    search_fields = ("actor_email", "target_id")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
