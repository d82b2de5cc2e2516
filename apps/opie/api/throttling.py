"""Per-credential rate limits, from the API_RATES setting, answered 429 with Retry-After."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from apps.accounts.models import hash_token
from apps.accounts.tokens import parse_authorization

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView


class TokenRateThrottle(SimpleRateThrottle):
    """Counts requests per API token; per user for the browser session, per address if anonymous."""

    scope = "api"

    def get_rate(self) -> str | None:
        """The rate of this scope, read from settings on every request (so tests can change it)."""
        rate: str | None = settings.API_RATES.get(self.scope)
        return rate

    def get_cache_key(self, request: Request, view: APIView) -> str:
        """The bucket this request counts against."""
        raw = parse_authorization(request.META.get("HTTP_AUTHORIZATION"))
        if raw and request.user.is_authenticated:
            # Each token has its own budget, so one busy integration cannot starve another.
            ident = f"token:{hash_token(raw)}"
        elif request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"addr:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class MessageRateThrottle(TokenRateThrottle):
    """The tighter budget of endpoints that run an agent (each one costs model time)."""

    scope = "messages"
