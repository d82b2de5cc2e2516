"""Provider failures explained: which provider failed and what a person should check.

agno is imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from agno.models.base import Model
    from agno.models.response import ModelResponse

_LABELS = {
    "local": "Local (llama.cpp)",
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "ollama": "Ollama",
    "openai_compatible": "OpenAI-compatible",
}
_DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
_WHAT_TO_CHECK = {
    "local": (
        "Check that llama-cpp-python is installed and that the GGUF file in "
        "$OPIE_MODEL_DIR (default .data/models) is intact; delete it to re-assemble it."
    ),
    "openai": "Check the API key, the model_id and the OpenAI status page.",
    "anthropic": "Check the API key, the model_id and the Anthropic status page.",
    "ollama": (
        "Check that `ollama serve` is running at base_url and that the model is pulled "
        "(`ollama pull <model_id>`)."
    ),
    "openai_compatible": "Check base_url, model_id and the server's logs.",
}
_DETAIL_CHARS = 300


def label(provider: str) -> str:
    """The provider's name as people know it."""
    return _LABELS.get(provider, provider)


def prefix(provider: str) -> str:
    """The start of every message about this provider."""
    return f"{label(provider)} provider: "


def describe_provider_error(exc: BaseException, provider: str) -> str:
    """Explain a provider failure in one message naming the provider and what to check."""
    head = prefix(provider)
    if str(exc).startswith(head):
        return str(exc)
    chain = _exception_chain(exc)
    detail = _detail(exc)

    if any(_is_timeout(e) for e in chain):
        advice = (
            "The machine may be busy; raise the model's timeout or lower max_tokens."
            if provider == "local"
            else "Check that the provider is reachable and not overloaded, "
            "or raise the model's timeout."
        )
        return f"{head}no answer within the timeout ({detail}). {advice}"
    if any(_is_connection_error(e) for e in chain):
        where = _request_url(chain) or "its base_url"
        reason = "connection refused" if any(_is_refused(e) for e in chain) else _detail(chain[-1])
        return (
            f"{head}could not connect to {where} ({reason}). "
            "Check that the server is running and reachable and that base_url is correct."
        )
    missing = next((e for e in chain if isinstance(e, ModuleNotFoundError)), None)
    if missing is not None and missing.name:
        package = missing.name.split(".")[0]
        return f"{head}the Python package `{package}` is missing; run `pip install {package}`."

    status = _status_code(chain)
    if status in (401, 403) or any(_has_class(e, "AuthenticationError") for e in chain):
        where = "the variable named by the model's api_key_env"
        if provider in _DEFAULT_KEY_ENV:
            where = f"{_DEFAULT_KEY_ENV[provider]} (or {where})"
        return (
            f"{head}the credentials were rejected (HTTP {status or 401}: {detail}). "
            f"Check the API key in {where} and its permissions."
        )
    if status == 404:
        return (
            f"{head}model or endpoint not found (HTTP 404: {detail}). Check model_id and base_url."
        )
    if status == 429:
        return (
            f"{head}rate limit or quota exceeded (HTTP 429: {detail}). "
            "Wait and retry, or check the account's quota."
        )
    # In-process llama.cpp has no response to be malformed: its TypeErrors are plain failures.
    if provider != "local" and any(_is_malformed(e) for e in chain):
        return (
            f"{head}malformed response ({detail}). Check that base_url points to an API of "
            "this provider's kind and that the model supports the request."
        )
    if status is not None and status >= 500:
        return (
            f"{head}server error (HTTP {status}: {detail}). The service may be down or "
            f"overloaded; try again later. {_WHAT_TO_CHECK.get(provider, '')}"
        ).rstrip()
    if status is not None and status >= 400:
        return f"{head}request rejected (HTTP {status}: {detail}). Check model_id and settings."
    return f"{head}{detail}. {_WHAT_TO_CHECK.get(provider, '')}".rstrip()


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _detail(exc: BaseException) -> str:
    from agno.exceptions import redact_secrets

    text = " ".join(str(exc).split()) or type(exc).__name__
    return redact_secrets(text[:_DETAIL_CHARS])


def _has_class(exc: BaseException, name: str) -> bool:
    # Matching class names covers openai/anthropic/ollama errors without importing those SDKs.
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _is_timeout(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.TimeoutException | TimeoutError) or _has_class(
        exc, "APITimeoutError"
    )


def _is_connection_error(exc: BaseException) -> bool:
    import httpx

    return isinstance(exc, httpx.ConnectError | httpx.NetworkError | ConnectionError) or (
        _has_class(exc, "APIConnectionError")
    )


def _is_refused(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower()


def _is_malformed(exc: BaseException) -> bool:
    import httpx

    # SDKs parsing an unexpected body fail with these rather than with a dedicated error.
    parse_errors = (
        AttributeError | TypeError | KeyError | IndexError | json.JSONDecodeError | EmptyStream
    )
    return isinstance(exc, parse_errors | httpx.DecodingError) or _has_class(exc, "ValidationError")


def _request_url(chain: list[BaseException]) -> str | None:
    for exc in chain:
        with contextlib.suppress(AttributeError, RuntimeError):
            # httpx raises RuntimeError when an exception carries no request.
            return str(exc.request.url)  # type: ignore[attr-defined]
    return None


def _status_code(chain: list[BaseException]) -> int | None:
    from agno.exceptions import ModelAuthenticationError, ModelProviderError

    for exc in chain:
        if isinstance(exc, ModelAuthenticationError):
            return exc.status_code
        if isinstance(exc, ModelProviderError):
            continue  # agno uses 502 as a default even for failures that had no HTTP status
        status = getattr(exc, "status_code", None)
        if status is None:
            status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return next((e.status_code for e in chain if isinstance(e, ModelProviderError)), None)


def _explained(exc: Exception, provider: str, model: Model) -> Exception:
    """Return ``exc`` as a ModelProviderError whose message explains it, keeping agno's own."""
    from agno.exceptions import (
        AgentRunException,
        ContextWindowExceededError,
        ModelProviderError,
        ModelRateLimitError,
        RetryableModelProviderError,
        RunCancelledException,
    )

    if isinstance(exc, RetryableModelProviderError | AgentRunException | RunCancelledException):
        return exc
    message = describe_provider_error(exc, provider)
    if isinstance(exc, ModelProviderError) and str(exc) == message:
        return exc
    chain = _exception_chain(exc)
    if any(_is_timeout(e) for e in chain):
        status = 504
    elif any(_is_connection_error(e) for e in chain):
        status = 502
    else:
        status = _status_code(chain) or 502
    # Keep agno's rate-limit / context-window classes: its retry logic depends on them.
    error_class: type[ModelProviderError] = ModelProviderError
    if isinstance(exc, ModelRateLimitError | ContextWindowExceededError):
        error_class = type(exc)
    return error_class(
        message=message, status_code=status, model_name=model.name, model_id=model.id
    )


@contextlib.contextmanager
def explaining_errors(provider: str, model: Model) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        explained = _explained(exc, provider, model)
        if explained is exc:
            raise
        raise explained from exc


class _ExplainsProviderErrors:
    """Mixin for agno models: failures are re-raised with a message saying what to check."""

    opie_provider: ClassVar[str] = ""

    def get_async_client(self) -> Any:
        """agno's cached async client, remade when the event loop changed.

        A client's connections belong to the loop that opened them. Under uvicorn every turn
        runs on one loop and the client lives on; a synchronous door (WSGI, a management
        command) runs each turn on a fresh loop and would otherwise reuse a dead one's client.
        """
        loop = asyncio.get_running_loop()
        made_on = getattr(self, "_opie_client_loop", None)
        if made_on is None or made_on() is not loop:
            self.async_client = None
            self._opie_client_loop = weakref.ref(loop)
        return super().get_async_client()  # type: ignore[misc]

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        with explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            return super().invoke(*args, **kwargs)  # type: ignore[misc]

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        with explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            return await super().ainvoke(*args, **kwargs)  # type: ignore[misc]

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        with explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            answered = False
            for delta in super().invoke_stream(*args, **kwargs):  # type: ignore[misc]
                answered = answered or _carries_answer(delta)
                yield delta
            if not answered:
                raise EmptyStream(EMPTY_STREAM)

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        with explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            answered = False
            async for delta in super().ainvoke_stream(*args, **kwargs):  # type: ignore[misc]
                answered = answered or _carries_answer(delta)
                yield delta
            if not answered:
                raise EmptyStream(EMPTY_STREAM)


EMPTY_STREAM = "the answer stream ended without any content"


class EmptyStream(ValueError):
    """A stream that ended without a word: an HTML error page read as SSE, for example."""


def _carries_answer(delta: ModelResponse) -> bool:
    return bool(delta.content or delta.tool_calls or delta.reasoning_content or delta.audio)


_EXPLAINING_CLASSES: dict[tuple[type[Model], str], type[Model]] = {}


def explaining[M: Model](model_class: type[M], provider: str) -> type[M]:
    key = (model_class, provider)
    if key not in _EXPLAINING_CLASSES:
        _EXPLAINING_CLASSES[key] = type(
            f"Opie{model_class.__name__}",
            (_ExplainsProviderErrors, model_class),
            {"opie_provider": provider, "__module__": __name__},
        )
    return cast("type[M]", _EXPLAINING_CLASSES[key])
