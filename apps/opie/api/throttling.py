"""Per-credential rate limits, from the API_RATES setting, answered 429 with Retry-After.

DRF's SimpleRateThrottle keeps every request time of the window in one cached list, read and
written back per request: the list is as long as the rate (or the traffic), and two processes
writing it at once lose each other's counts. Here each (credential, window) is one counter,
incremented atomically in the shared cache: one small round trip whatever the rate.
"""

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
    wait_seconds = 0.0
    num_requests: int  # set by SimpleRateThrottle from the rate
    duration: int

    def allow_request(self, request: Request, view: APIView) -> bool:
        """Count this request in its fixed window; refuse it once the window's budget is spent."""
        if self.rate is None:
            return True
        bucket = self.get_cache_key(request, view)
        now = self.timer()
        window = int(now // self.duration)
        key = f"{bucket}:{window}"
        count = self._count(key)
        if count is None:  # the shared cache is down: fail open rather than refuse everyone
            return True
        self.wait_seconds = (window + 1) * self.duration - now
        return count <= self.num_requests

    def _count(self, key: str) -> int | None:
        """This request's number in its window (None when the shared cache cannot count).

        One round trip, or two for the request that opens the window.
        """
        for _ in range(2):
            try:
                count = self.cache.incr(key)
            except ValueError:  # no counter yet: this request opens the window
                if self.cache.add(key, 1, timeout=self.duration + 1):
                    return 1
                continue  # another request opened it first
            return None if count is None else int(count)
        return None

    def wait(self) -> float:
        """Seconds until the current window ends."""
        return self.wait_seconds

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
