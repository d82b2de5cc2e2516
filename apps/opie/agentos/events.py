"""The events a streamed turn produces, named as clients of agent runtimes expect them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

RUN_STARTED = "run.started"
DELTA = "assistant.delta"
TOOL_CALL = "tool.call"
TOOL_RESULT = "tool.result"
REFERENCES = "references"
MESSAGE = "assistant.message"
SUCCEEDED = "run.succeeded"
FAILED = "run.failed"
CANCELLED = "run.cancelled"
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass(frozen=True)
class AgentEvent:
    """One event of a turn: a type and a JSON-serialisable payload."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_sse(self) -> str:
        """The event as a Server-Sent Events frame."""
        return f"event: {self.type}\ndata: {json.dumps(self.data, default=str)}\n\n"

    def as_dict(self) -> dict[str, Any]:
        """The event as a plain dict."""
        return {"type": self.type, "data": self.data}
