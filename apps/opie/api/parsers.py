"""Request parsers that enforce the body size limit DRF's JSON parser does not check."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework.parsers import JSONParser, MultiPartParser

from apps.opie.api.exceptions import RequestTooLarge


def _declared_length(parser_context: Mapping[str, Any] | None) -> int:
    request = (parser_context or {}).get("request")
    meta = getattr(request, "META", {})
    try:
        return int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE bytes; larger ones are answered 413."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        """Parse JSON after checking the declared and the actual size."""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if _declared_length(parser_context) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
        # A client may understate Content-Length: read one byte past the limit to find out.
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
        return super().parse(io.BytesIO(body), media_type, parser_context)


class LimitedMultiPartParser(MultiPartParser):
    """Multipart uploads up to AGENTOS_MAX_UPLOAD_BYTES (plus room for the form around the file)."""

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        """Refuse an upload whose declared size is over the limit before reading it."""
        limit = settings.AGENTOS_MAX_UPLOAD_BYTES + settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if _declared_length(parser_context) > limit:
            raise RequestTooLarge(
                f"Uploads are limited to {settings.AGENTOS_MAX_UPLOAD_BYTES} bytes per file."
            )
        return super().parse(stream, media_type, parser_context)
