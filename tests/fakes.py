"""Scripted, deterministic agno model: the only model stand-in allowed in the test suite.

Rules, applied to the last user message (first match wins):

- ``script: <text>``    -> answers ``<text>`` verbatim (stripped).
- ``calc: <expr>``      -> with a ``calculator`` tool: calls ``calculator(expression=<expr>)``,
                           then answers ``The answer is <result>.``
- ``time?``             -> with a ``current_datetime`` tool: calls it, then answers
                           ``The current date and time is <result>.``
- ``search: <query>``   -> with a ``search_knowledge*`` tool: calls it with ``query=<query>``,
                           then answers ``Found: <first 200 chars of the result>``
- the word ``fail``     -> raises agno's ModelProviderError("scripted provider failure", 502).
- the word ``recall``   -> ``Earlier you said: a | b`` (every earlier user message it can see).
- anything else         -> ``You said: <message>`` (padded/cut to ``answer_tokens`` words if set).

Latency knobs (constructor args, else env vars, so subprocess servers can be configured):
``first_token_delay`` (FAKE_MODEL_FIRST_TOKEN_DELAY), ``token_delay`` (FAKE_MODEL_TOKEN_DELAY),
``answer_tokens`` (FAKE_MODEL_ANSWER_TOKENS).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from agno.exceptions import ModelProviderError
from agno.metrics import MessageMetrics
from agno.models.base import Model
from agno.models.message import Message
from agno.models.response import ModelResponse

if TYPE_CHECKING:
    from apps.opie.agentos.providers import ProviderSpec

FAILURE_MESSAGE = "scripted provider failure"
_SEARCH_RESULT_CHARS = 200


def _env_float(name: str) -> float:
    return float(os.environ.get(name) or 0)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def _words(text: str) -> int:
    return len(text.split())


def _tool_names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [str(t.get("function", {}).get("name", "")) for t in tools or []]


def _split_words(text: str) -> list[str]:
    """Split text into word deltas whose concatenation is the text itself."""
    pieces = re.findall(r"\s*\S+", text)
    return pieces or [text]


@dataclass
class _Reply:
    """What the scripted "provider" returns before agno parsing."""

    text: str | None = None
    tool_name: str | None = None
    tool_args: dict[str, Any] = field(default_factory=dict)
    input_tokens: int = 0


@dataclass
class ScriptedModel(Model):
    """Deterministic rule-based agno model for tests and benchmarks."""

    id: str = "scripted"
    name: str = "Scripted"
    provider: str = "Scripted"
    first_token_delay: float = field(
        default_factory=lambda: _env_float("FAKE_MODEL_FIRST_TOKEN_DELAY")
    )
    token_delay: float = field(default_factory=lambda: _env_float("FAKE_MODEL_TOKEN_DELAY"))
    answer_tokens: int | None = field(default_factory=lambda: _env_int("FAKE_MODEL_ANSWER_TOKENS"))

    def _reply(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> _Reply:
        prompt_words = sum(_words(m.get_content_string()) for m in messages)
        reply = self._decide(messages, tools)
        reply.input_tokens = prompt_words
        return reply

    def _decide(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> _Reply:
        last = messages[-1] if messages else None
        if last is not None and last.role == "tool":
            return _Reply(text=self._answer_from_tool(last))

        user_texts = [m.get_content_string() for m in messages if m.role == "user"]
        text = user_texts[-1] if user_texts else ""
        lowered = text.lower()
        names = _tool_names(tools)

        if lowered.lstrip().startswith("script:"):
            return _Reply(text=text.lstrip()[len("script:") :].strip())
        if "calc:" in lowered and "calculator" in names:
            expression = text[lowered.index("calc:") + len("calc:") :].strip()
            return _Reply(tool_name="calculator", tool_args={"expression": expression})
        if "time?" in lowered and "current_datetime" in names:
            return _Reply(tool_name="current_datetime")
        search_tools = [n for n in names if n.startswith("search_knowledge")]
        if "search:" in lowered and search_tools:
            query = text[lowered.index("search:") + len("search:") :].strip()
            return _Reply(tool_name=search_tools[0], tool_args={"query": query})
        if re.search(r"\bfail\b", lowered):
            raise ModelProviderError(
                message=FAILURE_MESSAGE, status_code=502, model_name=self.name, model_id=self.id
            )
        if re.search(r"\brecall\b", lowered):
            earlier = user_texts[:-1]
            if not earlier:
                return _Reply(text="Earlier you said nothing.")
            return _Reply(text="Earlier you said: " + " | ".join(earlier))
        return _Reply(text=self._plain_answer(f"You said: {text}"))

    def _answer_from_tool(self, tool_message: Message) -> str:
        result = tool_message.get_content_string()
        name = tool_message.tool_name or ""
        if name == "calculator":
            return f"The answer is {result}."
        if name.startswith("search_knowledge"):
            return f"Found: {result[:_SEARCH_RESULT_CHARS]}"
        if name == "current_datetime":
            return f"The current date and time is {result}."
        return f"The tool returned: {result}"

    def _plain_answer(self, answer: str) -> str:
        if self.answer_tokens is None:
            return answer
        words = answer.split()[: self.answer_tokens]
        words += [f"word{i}" for i in range(len(words), self.answer_tokens)]
        return " ".join(words)

    def _usage(self, reply: _Reply) -> MessageMetrics:
        if reply.text is not None:
            output = _words(reply.text)
        else:
            output = 1 + _words(json.dumps(reply.tool_args))
        return MessageMetrics(
            input_tokens=reply.input_tokens,
            output_tokens=output,
            total_tokens=reply.input_tokens + output,
        )

    def _answer_delay(self, reply: _Reply) -> float:
        deltas = len(_split_words(reply.text)) if reply.text is not None else 1
        return self.first_token_delay + self.token_delay * (deltas - 1)

    def invoke(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> ModelResponse:
        """Answer in one response after the configured latency."""
        reply = self._reply(messages, tools)
        time.sleep(self._answer_delay(reply))
        return self._parse_provider_response(reply)

    async def ainvoke(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> ModelResponse:
        """Answer in one response after the configured latency, without blocking the loop."""
        reply = self._reply(messages, tools)
        await asyncio.sleep(self._answer_delay(reply))
        return self._parse_provider_response(reply)

    def invoke_stream(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Iterator[ModelResponse]:
        """Stream the answer one word per delta, then the usage."""
        reply = self._reply(messages, tools)
        started = time.monotonic()
        for index, chunk in enumerate(self._chunks(reply)):
            time.sleep(max(0.0, started + self._due(index) - time.monotonic()))
            yield self._parse_provider_response_delta(chunk)
        yield self._parse_provider_response_delta(self._usage(reply))

    async def ainvoke_stream(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ModelResponse]:
        """Stream the answer one word per delta with asyncio sleeps, then the usage."""
        reply = self._reply(messages, tools)
        started = time.monotonic()
        for index, chunk in enumerate(self._chunks(reply)):
            await asyncio.sleep(max(0.0, started + self._due(index) - time.monotonic()))
            yield self._parse_provider_response_delta(chunk)
        yield self._parse_provider_response_delta(self._usage(reply))

    def _due(self, index: int) -> float:
        """Seconds from the request until delta `index` is ready.

        The model keeps its own clock, as a remote model does: a reader that falls behind
        finds deltas waiting, instead of pushing back the ones still to come.
        """
        return self.first_token_delay + index * self.token_delay

    def _chunks(self, reply: _Reply) -> list[_Reply]:
        if reply.text is None:
            return [reply]
        return [_Reply(text=piece) for piece in _split_words(reply.text)]

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        """Turn a full scripted reply into a ModelResponse with usage."""
        parsed = self._parse_provider_response_delta(response)
        parsed.response_usage = self._usage(response)
        return parsed

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        """Turn a scripted chunk (text, tool call or usage) into a ModelResponse delta."""
        if isinstance(response, MessageMetrics):
            return ModelResponse(response_usage=response)
        if response.tool_name is not None:
            tool_call = {
                "id": f"call_{uuid4().hex[:12]}",
                "type": "function",
                "function": {
                    "name": response.tool_name,
                    "arguments": json.dumps(response.tool_args),
                },
            }
            return ModelResponse(role="assistant", tool_calls=[tool_call])
        return ModelResponse(role="assistant", content=response.text)


def make_model(spec: ProviderSpec | None = None) -> ScriptedModel:
    """Build a ScriptedModel for ``AGENTOS_MODEL_OVERRIDE="tests.fakes:make_model"``."""
    return ScriptedModel()


class FaultyProvider:
    """A loopback OpenAI-compatible chat server whose next answers can be made to fail.

    It is the scripted model again, but over HTTP, so a fault reaches the product through the
    real provider client (agno's OpenAILike on the openai SDK and httpx). ``mode`` picks how
    each request is answered:

    - ``ok``        -> streams ``You said: <message>`` word by word (or answers in one body).
    - ``slow``      -> says nothing for ``slow_seconds`` (longer than the client's timeout).
    - ``error500``  -> HTTP 500 with an OpenAI-style error body.
    - ``malformed`` -> HTTP 200 whose body is HTML, not JSON.
    - ``cut``       -> streams ``cut_after`` deltas, then drops the connection mid-answer.

    ``requests`` counts the chat requests received, so a test can see retries.
    """

    def __init__(self, mode: str = "ok", slow_seconds: float = 5.0, cut_after: int = 2) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.mode = mode
        self.slow_seconds = slow_seconds
        self.cut_after = cut_after
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,))
        self._thread.daemon = True
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type:
        from http.server import BaseHTTPRequestHandler

        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                provider.requests += 1
                mode = provider.mode
                if mode == "slow":
                    time.sleep(provider.slow_seconds)
                    mode = "ok"
                if mode == "error500":
                    self._send(500, "application/json", b'{"error": {"message": "kaboom"}}')
                elif mode == "malformed":
                    self._send(200, "text/html", b"<html>502 Bad Gateway</html>")
                elif body.get("stream"):
                    self._stream(_last_user_text(body), cut=mode == "cut")
                else:
                    answer = f"You said: {_last_user_text(body)}"
                    self._send(200, "application/json", json.dumps(_completion(answer)).encode())

            def _send(self, status: int, content_type: str, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, text: str, *, cut: bool) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                pieces = _split_words(f"You said: {text}")
                if cut:
                    pieces = pieces[: provider.cut_after]
                for piece in pieces:
                    self._chunk(_chunk_event({"content": piece}))
                if cut:
                    # Gone mid-answer: no finish, no [DONE], no closing chunk.
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._chunk(_chunk_event({}, finish="stop"))
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    if isinstance(content, list):
        content = " ".join(str(part.get("text", "")) for part in content)
    return str(content)


def _completion(answer: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "faulty",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": _words(answer), "total_tokens": 9},
    }


def _chunk_event(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "faulty",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()
