"""DRF authentication with the project's API tokens."""

from __future__ import annotations

from rest_framework import authentication, exceptions
from rest_framework.request import Request

from apps.accounts.models import User
from apps.accounts.tokens import parse_authorization, user_for_token


class APITokenAuthentication(authentication.BaseAuthentication):
    """Accepts `Authorization: Bearer <token>` (the spec's form) and `Token <token>`."""

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        """Return (user, None) for a usable token, None when no token header is sent."""
        header = request.META.get("HTTP_AUTHORIZATION")
        if not header:
            return None
        raw = parse_authorization(header)
        if raw is None:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: use 'Bearer <token>' or 'Token <token>'."
            )
        user = user_for_token(raw)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        """Answer 401 (not 403) with a challenge when credentials are missing."""
        return 'Bearer realm="api"'
