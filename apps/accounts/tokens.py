"""API token issuing and checking, shared by DRF, the AgentOS server and the commands."""

from __future__ import annotations

import secrets
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from apps.accounts.audit import audit_record
from apps.accounts.models import TOKEN_PREFIX, APIToken, AuditEvent, User, hash_token

AUTH_SCHEMES = ("bearer", "token")


@transaction.atomic
def token_create(
    *,
    user: User,
    name: str,
    expires_at: datetime | None = None,
    actor: User | None = None,
    ip: str | None = None,
) -> tuple[APIToken, str]:
    """Issue a token; the raw value is returned once and never stored."""
    # `actor` stays None when no person asked through the product (a command, a script).
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = APIToken.objects.create(
        user=user,
        name=name,
        prefix=raw[: len(TOKEN_PREFIX) + 6],
        key_hash=hash_token(raw),
        expires_at=expires_at,
    )
    audit_record(
        actor=actor,
        action=AuditEvent.Action.TOKEN_CREATED,
        target=token,
        details=token_details(token),
        ip=ip,
    )
    return token, raw


@transaction.atomic
def token_revoke(
    *, user: User, token_id: int, actor: User | None = None, ip: str | None = None
) -> APIToken:
    """Revoke one of the user's tokens; another user's token is not found."""
    token = (
        APIToken.objects.select_related("user")
        .select_for_update(of=("self",))
        .get(user=user, pk=token_id)
    )
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action=AuditEvent.Action.TOKEN_REVOKED,
            target=token,
            details=token_details(token),
            ip=ip,
        )
    return token


def token_details(token: APIToken) -> dict[str, object]:
    """What an audit event says about a token: its public marks, never its value or hash."""
    return {
        "name": token.name,
        "prefix": token.prefix,
        "owner": token.user.email,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
    }


def parse_authorization(header: str | None) -> str | None:
    """The raw token of an `Authorization: Bearer <t>` or `Token <t>` header, else None."""
    if not header:
        return None
    scheme, _, raw = header.strip().partition(" ")
    raw = raw.strip()
    if scheme.lower() not in AUTH_SCHEMES or not raw or " " in raw:
        return None
    return raw


def user_for_token(raw: str) -> User | None:
    """The active user a usable token belongs to, or None."""
    token = (
        APIToken.objects.usable()
        .select_related("user")
        .filter(key_hash=hash_token(raw), user__is_active=True)
        .first()
    )
    if token is None:
        return None
    _touch(token)
    return token.user


async def auser_for_token(raw: str) -> User | None:
    """Async twin of `user_for_token`, for the FastAPI server."""
    token = await (
        APIToken.objects.usable()
        .select_related("user")
        .filter(key_hash=hash_token(raw), user__is_active=True)
        .afirst()
    )
    if token is None:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > APIToken.LAST_USED_RESOLUTION:
        await APIToken.objects.filter(pk=token.pk).aupdate(last_used_at=now)
    return token.user


def _touch(token: APIToken) -> None:
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > APIToken.LAST_USED_RESOLUTION:
        APIToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
