"""The site's 500 handler: a database outage is a 503 to try again, in JSON under /api/."""

from __future__ import annotations

import sys

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader

from apps.opie.api.errors import SERVER_ERROR_MESSAGE, error_body
from apps.opie.outages import (
    DATABASE_UNAVAILABLE,
    DATABASE_UNAVAILABLE_MESSAGE,
    RETRY_AFTER_SECONDS,
    is_database_outage,
)

API_PREFIX = "/api/"


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's `handler500`: called while the uncaught exception is being handled."""
    outage = is_database_outage(sys.exc_info()[1])
    status = 503 if outage else 500
    response: HttpResponse
    if request.path.startswith(API_PREFIX):
        code, message = (
            (DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_MESSAGE)
            if outage
            else ("server_error", SERVER_ERROR_MESSAGE)
        )
        response = JsonResponse(error_body(code, message), status=status)
    else:
        # Rendered without the request: its context processors would query the database.
        template = loader.get_template("503.html" if outage else "500.html")
        response = HttpResponse(template.render(), status=status)
    if outage:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
