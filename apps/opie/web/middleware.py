"""Turns a service's NotFound escaping a web view into the styled 404 page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

from apps.opie.agentos.service import NotFound
from apps.opie.web.common import not_found


class NotFoundPageMiddleware(MiddlewareMixin):
    """A foreign or missing id gets the same styled 404 on every page, with no view code."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """The 404 page for NotFound; anything else goes on to Django's handling."""
        if isinstance(exception, NotFound):
            return not_found(request, str(exception))
        return None
