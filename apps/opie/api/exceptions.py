"""API exceptions beyond DRF's own (kept free of view imports: parsers load them early)."""

from __future__ import annotations

from rest_framework import exceptions, status


class RequestTooLarge(exceptions.APIException):
    """The request body is larger than the server accepts."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


class Conflict(exceptions.APIException):
    """The request clashes with the current state of a resource."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The resource is in use."
    default_code = "conflict"


class ServiceUnavailable(exceptions.APIException):
    """A dependency the request needs is down or switched off."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is unavailable."
    default_code = "unavailable"

    def __init__(
        self, detail: str | None = None, code: str | None = None, wait: int | None = None
    ) -> None:
        super().__init__(detail, code)
        # Seconds after which trying again makes sense (sent as Retry-After).
        self.wait = wait
