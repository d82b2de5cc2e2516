"""The audit log: one `audit_record` call per security-relevant change, in the same transaction."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.http import HttpRequest
from rest_framework.request import Request

from apps.accounts.models import AuditEvent, User


def client_ip(request: HttpRequest | Request) -> str | None:
    """The address the request came from, as the server saw it."""
    # X-Forwarded-For is not read: any client can forge it. Behind a proxy, have the server
    # set REMOTE_ADDR from the proxy's header (uvicorn --proxy-headers --forwarded-allow-ips).
    return request.META.get("REMOTE_ADDR") or None


def acting_user(request: HttpRequest) -> User | None:
    """The signed-in user behind a request, or None."""
    return request.user if isinstance(request.user, User) else None


def audit_record(
    *,
    actor: User | None,
    action: AuditEvent.Action,
    target: models.Model,
    details: dict[str, Any] | None = None,
    ip: str | None = None,
) -> AuditEvent:
    """Record one change; `details` must never hold a secret such as a raw token."""
    return AuditEvent.objects.create(
        actor=actor,
        actor_email=actor.email if actor is not None else "",
        action=action,
        target_type=target._meta.model_name or "",
        target_id=str(target.pk),
        details=details or {},
        ip_address=ip,
    )
