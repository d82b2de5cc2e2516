"""OpenAPI generation details: component names, token auth, and the shared error responses."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework import serializers

ERROR_SCHEMA = {
    "type": "object",
    "description": 'Every 4xx and 5xx answer: {"error": {"code", "message", "details"}}.',
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "example": "not_found"},
                "message": {"type": "string", "example": "Agent 'agent-123' not found."},
                "details": {"description": "Field errors or other specifics; {} when none."},
            },
            "required": ["code", "message", "details"],
        }
    },
    "required": ["error"],
}
ERROR_REF = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


class AutoSchema(SpectacularAutoSchema):
    """Names nested serializers after their view: `UsageView.OutputSerializer` is UsageOutput."""

    def get_serializer_name(
        self, serializer: serializers.BaseSerializer[Any], direction: Any
    ) -> str:
        """A unique component name, also for the house style's nested Input/Output serializers."""
        parts = type(serializer).__qualname__.split(".")
        if len(parts) == 1:
            return parts[0]
        return "".join(part.removesuffix("Serializer").removesuffix("View") for part in parts)


class APITokenScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <token>` (or `Token <token>`) with a token from `create_api_token`."""

    target_class = "apps.accounts.authentication.APITokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        """A bearer scheme."""
        definition: dict[str, Any] = build_bearer_security_scheme_object(
            header_name="Authorization",
            token_prefix="Bearer",  # noqa: S106 - the scheme name, not a secret
        )
        return definition


def _error(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": ERROR_REF, **extra}


def add_error_responses(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: document the error shape on every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    retry_after = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}}
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            has_input = "requestBody" in operation or any(
                p.get("in") == "query" for p in operation.get("parameters", [])
            )
            if has_input:
                responses.setdefault("400", _error("Malformed or invalid input."))
            if operation.get("security") not in (None, [], [{}]):
                responses.setdefault("401", _error("Missing or invalid credentials."))
            if "{" in path:
                responses.setdefault("404", _error("No such id among yours."))
            responses.setdefault("429", _error("Rate limit reached.", headers=retry_after))
            responses.setdefault("default", _error("Any other error, in the same shape."))
    return result
