from __future__ import annotations

import ast
import asyncio
import importlib.util
import json
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from agno.agent import Agent
from agno.db.in_memory import InMemoryDb
from agno.exceptions import ModelProviderError
from agno.models.base import Model
from agno.models.message import Message
from agno.run.agent import RunContentEvent, RunErrorEvent, RunOutput
from agno.run.base import RunStatus

from apps.opie.agentos.providers import (
    OVERRIDE_SETTING,
    ProviderError,
    ProviderSpec,
    describe_provider_error,
    get_model,
)
from apps.opie.agentos.providers.errors import explaining
from apps.opie.agentos.providers.local import (
    LocalLlamaModel,
    _arithmetic_expression,
    _plan_tool_call,
)
from tests.fakes import FAILURE_MESSAGE, ScriptedModel, make_model

CLOSED_PORT_URL = "http://127.0.0.1:9/v1"
_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression made of numbers, + - * / and parentheses."""

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
        raise ValueError(f"unsupported expression: {expression}")

    return f"{evaluate(ast.parse(expression, mode='eval').body):g}"


def current_datetime() -> str:
    """Return the current date and time in UTC."""
    return "2030-01-02T03:04:05+00:00"


def search_knowledge_base(query: str) -> str:
    """Search the knowledge base."""
    return json.dumps([{"content": f"Vacation policy: 25 days. ({query})"}])


def agent_with(model: Model, **kwargs: Any) -> Agent:
    return Agent(model=model, telemetry=False, **kwargs)


def content_deltas(events: Iterable[object]) -> list[str]:
    return [e.content for e in events if isinstance(e, RunContentEvent) and e.content]


def run_errors(events: Iterable[object]) -> list[RunErrorEvent]:
    return [e for e in events if isinstance(e, RunErrorEvent)]


def tool_dicts(*functions: Callable[..., Any]) -> list[dict[str, Any]]:
    from agno.tools.function import Function

    return [
        {"type": "function", "function": Function.from_callable(f).to_dict()} for f in functions
    ]


@pytest.fixture
def canned_server() -> Iterator[Callable[[int, str, bytes], str]]:
    """A loopback HTTP server answering every POST with one canned response; returns its URL."""
    canned: list[tuple[int, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status, content_type, body = canned[-1]
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def serve(status: int, content_type: str, body: bytes) -> str:
        canned.append((status, content_type, body))
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield serve
    server.shutdown()
    server.server_close()


def test_it_answers_plainly_through_an_agent() -> None:
    run = agent_with(ScriptedModel()).run("hello there")

    assert run.status == RunStatus.completed
    assert run.content == "You said: hello there"


def test_it_calls_the_calculator_tool_and_answers_with_its_result() -> None:
    run = agent_with(ScriptedModel(), tools=[calculator]).run("calc: 6 * (3 + 4)")

    assert run.content == "The answer is 42."
    assert run.tools is not None
    assert [(t.tool_name, t.tool_args, t.result) for t in run.tools] == [
        ("calculator", {"expression": "6 * (3 + 4)"}, "42")
    ]


def test_it_calls_datetime_and_search_tools() -> None:
    agent = agent_with(ScriptedModel(), tools=[current_datetime, search_knowledge_base])

    assert agent.run("time?").content == ("The current date and time is 2030-01-02T03:04:05+00:00.")
    found = agent.run("search: vacation").content
    assert found == 'Found: [{"content": "Vacation policy: 25 days. (vacation)"}]'


def test_it_ignores_tool_rules_when_the_tool_is_missing() -> None:
    assert agent_with(ScriptedModel()).run("calc: 1+1").content == "You said: calc: 1+1"


def test_it_returns_scripted_text_verbatim() -> None:
    html = "<b>bold</b>\n<script>alert('x')</script>"

    assert agent_with(ScriptedModel()).run(f"script: {html}").content == html


def test_it_streams_the_answer_as_several_content_events() -> None:
    deltas = content_deltas(agent_with(ScriptedModel()).run("script: one two", stream=True))

    assert deltas == ["one", " two"]


def test_it_streams_asynchronously_with_the_configured_delays() -> None:
    model = ScriptedModel(first_token_delay=0.05, token_delay=0.02)

    async def collect() -> tuple[list[str], float]:
        started = time.monotonic()
        deltas = content_deltas(
            [e async for e in agent_with(model).arun("script: a b c d e", stream=True)]
        )
        return deltas, time.monotonic() - started

    deltas, elapsed = asyncio.run(collect())

    assert deltas == ["a", " b", " c", " d", " e"]
    assert elapsed >= 0.05 + 4 * 0.02


def test_it_reads_latency_and_answer_length_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_MODEL_FIRST_TOKEN_DELAY", "0.25")
    monkeypatch.setenv("FAKE_MODEL_TOKEN_DELAY", "0.01")
    monkeypatch.setenv("FAKE_MODEL_ANSWER_TOKENS", "7")
    model = ScriptedModel()

    assert (model.first_token_delay, model.token_delay, model.answer_tokens) == (0.25, 0.01, 7)
    model.first_token_delay = 0
    assert len(str(agent_with(model).run("hello").content).split()) == 7


def test_it_reports_token_usage_in_the_run_metrics() -> None:
    agent = agent_with(ScriptedModel())
    run = agent.run("hello there")

    assert run.metrics is not None
    assert run.metrics.input_tokens > 0
    assert run.metrics.output_tokens == 4
    assert run.metrics.total_tokens == run.metrics.input_tokens + 4

    streamed = [
        e
        for e in agent.run("hello there", stream=True, yield_run_output=True)
        if isinstance(e, RunOutput)
    ]
    assert streamed[0].metrics is not None
    assert streamed[0].metrics.output_tokens == 4


def test_it_surfaces_model_provider_errors() -> None:
    agent = agent_with(ScriptedModel())

    run = agent.run("please fail now")
    assert run.status == RunStatus.error
    assert run.content == FAILURE_MESSAGE

    errors = run_errors(agent.run("fail", stream=True))
    assert [(e.content, e.error_type) for e in errors] == [
        (FAILURE_MESSAGE, "model_provider_error")
    ]


def test_it_raises_model_provider_error_from_the_model_itself() -> None:
    model = ScriptedModel()
    messages = [Message(role="user", content="fail")]

    with pytest.raises(ModelProviderError, match=FAILURE_MESSAGE) as caught:
        model.invoke(messages=messages, assistant_message=Message(role="assistant"))
    assert caught.value.status_code == 502


def test_it_recalls_earlier_user_messages_from_history() -> None:
    agent = agent_with(ScriptedModel(), db=InMemoryDb(), add_history_to_context=True)

    agent.run("my name is Ada", session_id="s1")
    agent.run("I like tea", session_id="s1")

    assert agent.run("recall", session_id="s1").content == (
        "Earlier you said: my name is Ada | I like tea"
    )


def test_it_returns_the_override_model_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE_SETTING, "tests.fakes:make_model")

    assert isinstance(get_model(ProviderSpec(provider="openai")), ScriptedModel)
    assert isinstance(make_model(ProviderSpec()), ScriptedModel)


def test_it_rejects_an_override_that_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE_SETTING, "tests.fakes:no_such_factory")

    with pytest.raises(ProviderError, match="no_such_factory"):
        get_model(ProviderSpec())


@pytest.mark.usefixtures("no_override")
def test_it_requires_an_openai_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(ProviderError, match="OPENAI_API_KEY") as caught:
        get_model(ProviderSpec(provider="openai"))
    assert caught.value.provider == "openai"


@pytest.mark.usefixtures("no_override")
def test_it_requires_the_configured_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    spec = ProviderSpec(
        provider="openai_compatible", base_url=CLOSED_PORT_URL, api_key_env="MY_LLM_KEY"
    )

    with pytest.raises(ProviderError, match="MY_LLM_KEY"):
        get_model(spec)


@pytest.mark.usefixtures("no_override")
def test_it_requires_a_base_url_for_openai_compatible() -> None:
    with pytest.raises(ProviderError, match="base_url is required"):
        get_model(ProviderSpec(provider="openai_compatible"))


@pytest.mark.usefixtures("no_override")
def test_it_rejects_unknown_providers() -> None:
    with pytest.raises(ProviderError, match="Unknown model provider 'mystery'"):
        get_model(ProviderSpec(provider="mystery"))


@pytest.mark.usefixtures("no_override")
@pytest.mark.parametrize(
    ("provider", "package"),
    [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("ollama", "ollama"),
        ("openai_compatible", "openai"),
    ],
)
def test_it_builds_the_provider_or_names_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch, provider: str, package: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    spec = ProviderSpec(provider=provider, model_id="some-model", base_url=CLOSED_PORT_URL)

    if importlib.util.find_spec(package) is None:
        with pytest.raises(ProviderError, match=f"pip install {package}"):
            get_model(spec)
    else:
        assert get_model(spec).id == "some-model"


@pytest.mark.usefixtures("no_override")
def test_it_builds_the_local_model_by_default() -> None:
    model = get_model(ProviderSpec(temperature=0.3, max_tokens=64, timeout=5))

    assert isinstance(model, LocalLlamaModel)
    assert (model.temperature, model.max_tokens, model.timeout) == (0.3, 64, 5)


def test_it_explains_a_refused_connection_to_an_openai_compatible_server() -> None:
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.post(f"{CLOSED_PORT_URL}/chat/completions", json={}, timeout=5)
    try:
        # agno's OpenAI models re-raise connection failures like this.
        raise ModelProviderError("Connection error.") from caught.value
    except ModelProviderError as wrapped:
        messages = [
            describe_provider_error(caught.value, "openai_compatible"),
            describe_provider_error(wrapped, "openai_compatible"),
        ]

    for message in messages:
        assert message.startswith("OpenAI-compatible provider: could not connect to")
        assert "127.0.0.1:9" in message
        assert "connection refused" in message
        assert "base_url" in message


@pytest.mark.usefixtures("no_override")
def test_it_reports_a_refused_connection_in_an_agent_run() -> None:
    from agno.models.openai.like import OpenAILike

    model = get_model(ProviderSpec(provider="openai_compatible", base_url=CLOSED_PORT_URL))
    assert isinstance(model, OpenAILike)
    model.max_retries = 0

    run = agent_with(model).run("hello")

    assert run.status == RunStatus.error
    assert "could not connect" in str(run.content)


@pytest.mark.usefixtures("no_override")
@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (500, "application/json", b'{"error": {"message": "kaboom"}}', "server error (HTTP 500"),
        (401, "application/json", b'{"error": {"message": "bad key"}}', "rejected (HTTP 401"),
        (200, "text/html", b"<html>not an API</html>", "malformed response"),
    ],
)
def test_it_explains_http_failures_of_an_openai_compatible_server(
    canned_server: Callable[[int, str, bytes], str],
    status: int,
    content_type: str,
    body: bytes,
    expected: str,
) -> None:
    from agno.models.openai.like import OpenAILike

    model = get_model(
        ProviderSpec(
            provider="openai_compatible", base_url=canned_server(status, content_type, body)
        )
    )
    assert isinstance(model, OpenAILike)
    model.max_retries = 0

    run = agent_with(model).run("hello")

    assert run.status == RunStatus.error
    assert str(run.content).startswith("OpenAI-compatible provider: ")
    assert expected in str(run.content)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ReadTimeout("read timed out"), "no answer within the timeout"),
        (
            httpx.HTTPStatusError(
                "unauthorized",
                request=httpx.Request("POST", CLOSED_PORT_URL),
                response=httpx.Response(401),
            ),
            "Check the API key in OPENAI_API_KEY",
        ),
        (
            httpx.HTTPStatusError(
                "boom",
                request=httpx.Request("POST", CLOSED_PORT_URL),
                response=httpx.Response(500),
            ),
            "server error (HTTP 500",
        ),
        (json.JSONDecodeError("Expecting value", "<html>", 0), "malformed response"),
        (ModelProviderError("Rate limit reached", status_code=429), "HTTP 429"),
    ],
)
def test_it_describes_common_provider_failures(error: Exception, expected: str) -> None:
    message = describe_provider_error(error, "openai")

    assert message.startswith("OpenAI provider: ")
    assert expected in message
    assert describe_provider_error(ModelProviderError(message), "openai") == message


def test_it_rewrites_provider_failures_inside_agent_runs() -> None:
    model = explaining(ScriptedModel, "ollama")()

    run = agent_with(model).run("fail")
    streamed = run_errors(agent_with(model).run("fail", stream=True))

    assert run.status == RunStatus.error
    assert str(run.content).startswith(
        f"Ollama provider: server error (HTTP 502: {FAILURE_MESSAGE})"
    )
    assert "ollama serve" in str(run.content)
    assert streamed[0].content == run.content


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is 12*7?", "12*7"),
        ("Please compute (3+4)*5 for me", "(3+4)*5"),
        ("what's 1234 + 4321?", "1234 + 4321"),
        ("2 x 3", "2*3"),
        ("3^2 + 1", "3**2 + 1"),
        ("In 2024 we sold 3 cars", None),
    ],
)
def test_it_extracts_arithmetic_from_a_message(text: str, expected: str | None) -> None:
    assert _arithmetic_expression(text) == expected


@pytest.mark.parametrize(
    ("text", "tool", "hint"),
    [
        ("What is 12*7?", "calculator", "12*7"),
        ("What time is it?", "current_datetime", None),
        ("What does the handbook say?", "search_knowledge_base", "What does the handbook say?"),
    ],
)
def test_it_plans_local_tool_calls_deterministically(
    text: str, tool: str, hint: str | None
) -> None:
    tools = tool_dicts(calculator, current_datetime, search_knowledge_base)
    plan = _plan_tool_call([Message(role="user", content=text)], tools, "auto")

    assert plan is not None
    assert (plan.tool["function"]["name"], plan.hint) == (tool, hint)


def test_it_plans_no_tool_call_after_a_result_or_without_a_reason() -> None:
    messages = [
        Message(role="user", content="What is 2+2?"),
        Message(role="tool", content="4", tool_name="calculator"),
    ]

    assert _plan_tool_call(messages, tool_dicts(calculator), "auto") is None
    assert _plan_tool_call(messages[:1], tool_dicts(calculator), "none") is None
    thanks = [Message(role="user", content="Thanks, that is all.")]
    assert _plan_tool_call(thanks, tool_dicts(calculator, search_knowledge_base), "auto") is None


@pytest.mark.slow_model
@pytest.mark.usefixtures("no_override")
def test_it_answers_with_the_real_local_model() -> None:
    model = get_model(ProviderSpec())
    assert isinstance(model, LocalLlamaModel)
    agent = agent_with(model)

    answer = agent.run("Hi there, who are you?")
    assert answer.status == RunStatus.completed
    assert str(answer.content).strip()
    assert answer.metrics is not None
    assert answer.metrics.input_tokens > 0
    assert answer.metrics.output_tokens > 0

    deltas = content_deltas(agent.run("Tell me about the sea.", stream=True))
    assert len(deltas) > 1

    async def stream_async() -> list[str]:
        return content_deltas([e async for e in agent.arun("Tell me about the sea.", stream=True)])

    assert asyncio.run(stream_async()) == deltas

    run = agent_with(model, tools=[calculator]).run("What is 12 * 7?")
    assert run.status == RunStatus.completed
    assert run.tools is not None
    assert [(t.tool_name, t.tool_args, t.result) for t in run.tools] == [
        ("calculator", {"expression": "12 * 7"}, "84")
    ]
    assert str(run.content).strip()


def test_the_local_model_reads_knowledge_as_the_sentences_that_answer_the_question() -> None:
    from apps.opie.agentos import prompts
    from apps.opie.agentos.providers.local import _relevant_passage

    chunks = [
        {"chunk": "# Handbook\nSupport answers from 9 to 5. A refund takes 5 to 7 days."},
        {"chunk": "Shipping is free over 50 euros."},
    ]
    result = "\n".join([prompts.DOCUMENTS_OPEN, json.dumps(chunks), prompts.DOCUMENTS_CLOSE])
    assert _relevant_passage(result, "How long does a refund take?").startswith(
        "A refund takes 5 to 7 days."
    )
    assert _relevant_passage("No matching passages.", "refund?") == "No matching passages."
