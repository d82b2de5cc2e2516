"""What every web view shares: the request type, htmx detection and the styled 404."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.accounts.models import User


class AuthedRequest(HttpRequest):
    user: User


def is_htmx(request: HttpRequest) -> bool:
    """Whether htmx sent the request (it then wants a fragment, not a page)."""
    return request.headers.get("HX-Request") == "true"


def not_found(request: HttpRequest, message: str) -> HttpResponse:
    """The styled 404 page; a foreign id gets exactly this, like a missing one."""
    return render(request, "opie/not_found.html", {"message": message}, status=404)


def upload_accept() -> str:
    """The file input's `accept` list: the extensions the server takes."""
    return ",".join(
        f".{kind.lower().lstrip('.')}" for kind in settings.AGENTOS_ALLOWED_UPLOAD_TYPES
    )
