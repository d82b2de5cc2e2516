"""One error shape for every 4xx and 5xx of the API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging
import math
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, RequestDataTooBig, TooManyFieldsSent
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from django.db.models import ProtectedError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import set_rollback

from apps.opie.agentos.config import AgentsUnavailable
from apps.opie.agentos.embedders import EmbedderError
from apps.opie.agentos.knowledge import KnowledgeMismatch
from apps.opie.agentos.providers import ProviderError
from apps.opie.agentos.service import InvalidInput, NotFound
from apps.opie.api.exceptions import Conflict, RequestTooLarge, ServiceUnavailable
from apps.opie.outages import (
    DATABASE_UNAVAILABLE,
    DATABASE_UNAVAILABLE_MESSAGE,
    RETRY_AFTER_SECONDS,
    is_database_outage,
)

logger = logging.getLogger(__name__)

SERVER_ERROR_MESSAGE = "Something went wrong on our side; the error has been logged."


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The body every error response carries."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(status_code: int, code: str, message: str, details: Any = None) -> JsonResponse:
    """An error response for plain Django views (outside DRF's exception handling)."""
    return JsonResponse(error_body(code, message, details), status=status_code)


@csrf_exempt  # it changes nothing, and a CSRF refusal would be Django's HTML page
def endpoint_not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """JSON 404 for a URL under the API that names no endpoint."""
    details = {"path": request.path}
    if not request.path.endswith("/"):
        details["hint"] = "Endpoint URLs end with a slash."
    return error_response(404, "not_found", "No such endpoint.", details)


def _as_api_exception(exc: Exception) -> exceptions.APIException | None:
    """Translate the errors of Django and of the service layer into DRF's."""
    translated: exceptions.APIException | None = None
    if isinstance(exc, exceptions.APIException):
        translated = exc
    elif isinstance(exc, NotFound | Http404):
        translated = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, ObjectDoesNotExist):
        # Selectors raise DoesNotExist for rows of other users too: both are a plain 404.
        translated = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        translated = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, InvalidInput):
        translated = exceptions.ValidationError({"non_field_errors": [str(exc)]})
    elif isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        translated = exceptions.ValidationError(detail)
    elif isinstance(exc, RequestDataTooBig | TooManyFieldsSent):
        translated = RequestTooLarge()
    elif isinstance(exc, ProtectedError):
        translated = Conflict("It is still used by other records; remove those first.")
    elif isinstance(exc, IntegrityError):
        translated = Conflict("It conflicts with existing data (probably a duplicate).")
    elif isinstance(exc, KnowledgeMismatch):
        translated = Conflict(str(exc), code="knowledge_mismatch")
    elif isinstance(exc, AgentsUnavailable):
        translated = ServiceUnavailable(str(exc), code="agents_unavailable")
    elif isinstance(exc, ProviderError):
        # The agent's model cannot be built here (a missing key or package): say which.
        translated = ServiceUnavailable(str(exc), code="provider_unavailable")
    elif isinstance(exc, EmbedderError):
        translated = ServiceUnavailable(str(exc), code="embedder_unavailable")
    elif is_database_outage(exc):
        logger.warning("Database unavailable: %s", " ".join(str(exc).split()))
        translated = ServiceUnavailable(
            DATABASE_UNAVAILABLE_MESSAGE, code=DATABASE_UNAVAILABLE, wait=RETRY_AFTER_SECONDS
        )
    return translated


def _first_message(detail: Any, prefix: str = "") -> str:
    """A readable sentence from a (nested) validation error: its first message."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            label = "" if key == "non_field_errors" else f"{prefix}{key}"
            return _first_message(value, f"{label}: " if label else prefix)
    if isinstance(detail, list) and detail:
        return _first_message(detail[0], prefix)
    return f"{prefix}{detail}"


def _code_of(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    if isinstance(codes, str):
        return codes
    return str(exc.default_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every failure becomes the one error shape, in JSON."""
    request = context.get("request")
    if isinstance(request, Request):
        # Errors are JSON whatever the client negotiated (an SSE or Markdown export included).
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = "application/json"
    api_exc = _as_api_exception(exc)
    if api_exc is None:
        logger.exception("Unhandled API error", exc_info=exc)
        set_rollback()
        return Response(error_body("server_error", SERVER_ERROR_MESSAGE), status=500)
    headers: dict[str, str] = {}
    auth_header = getattr(api_exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    details: Any = {}
    if isinstance(api_exc, exceptions.ValidationError):
        details = api_exc.detail
        code, message = "invalid", f"Invalid input. {_first_message(api_exc.detail)}"
    else:
        code, message = _code_of(api_exc), str(api_exc.detail)
    wait = getattr(api_exc, "wait", None)
    if isinstance(api_exc, exceptions.Throttled) or wait:
        retry_after = max(1, math.ceil(wait or 1))
        headers["Retry-After"] = str(retry_after)
        details = {"retry_after": retry_after}
    set_rollback()
    return Response(error_body(code, message, details), status=api_exc.status_code, headers=headers)
