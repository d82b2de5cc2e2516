"""The chat page: sending, the SSE stream of HTML fragments, tools, stop, errors, escaping."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client, override_settings

from apps.accounts.models import User
from apps.opie.agentos import runs
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import Agent, ChatSession
from tests import factories

HTMX = {"HTTP_HX_REQUEST": "true"}
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'

Frames = list[tuple[str, str]]


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def helper(user: User) -> Agent:
    return factories.agent(user, agent_id="agent-helper", name="Helper", tools=["calculator"])


def parse(body: str) -> Frames:
    """(event, data) of each SSE frame."""
    frames = []
    for block in body.split("\n\n"):
        lines = block.split("\n")
        if not lines[0].startswith("event: "):
            continue
        data = "\n".join(line.removeprefix("data: ") for line in lines[1:])
        frames.append((lines[0].removeprefix("event: "), data))
    return frames


def stream(web: Client, url: str, *, cancel_on_run: bool = False) -> Frames:
    """Read a turn's stream as the browser's EventSource would, with the same cookies."""

    async def read() -> Frames:
        client = AsyncClient()
        client.cookies = web.cookies
        response = await client.get(url)
        assert response["Content-Type"] == "text/event-stream"
        body, pending_cancel = "", cancel_on_run
        async for chunk in response.streaming_content:
            body += chunk.decode()
            started = re.search(r"/agentos/runs/[^/]+/cancel/", body)
            if pending_cancel and started:
                pending_cancel = False
                assert (await client.post(started.group(0))).status_code == 204
        # A turn that just finished leaves the set of running turns one loop pass later;
        # `drain` would spin on it until then.
        await asyncio.sleep(0)
        await runs.drain()
        return parse(body)

    return async_to_sync(read)()


def send(web: Client, agent_id: str, message: str, session_id: str = "") -> Any:
    return web.post(
        f"/agentos/chat/{agent_id}/send/", {"message": message, "session_id": session_id}, **HTMX
    )


def stream_url(response: Any) -> str:
    found = re.search(r'sse-connect="([^"]+)"', response.content.decode())
    assert found, response.content.decode()
    return found.group(1)


def events(frames: Frames) -> list[str]:
    return [name for name, _ in frames]


def data_of(frames: Frames, name: str) -> list[str]:
    return [data for event, data in frames if event == name]


def test_sending_answers_with_the_turn_and_opens_a_session(web: Client, helper: Agent) -> None:
    response = send(web, "agent-helper", "hello there")
    assert response.status_code == 200
    session = ChatSession.objects.get(agent=helper)
    body = response.content.decode()
    assert "hello there" in body
    assert f'value="{session.session_id}" hx-swap-oob="true"' in body
    assert 'id="session-list"' in body
    assert response["HX-Replace-Url"] == f"/agentos/chat/agent-helper/?session={session.session_id}"
    assert stream_url(response).startswith("/agentos/chat/agent-helper/stream/")


def test_the_answer_streams_in_several_deltas_then_as_rendered_markdown(
    web: Client, helper: Agent
) -> None:
    frames = stream(web, stream_url(send(web, "agent-helper", "hello **bold** world")))
    assert events(frames)[0] == "status"
    assert "run" in events(frames)
    deltas = data_of(frames, "delta")
    assert len(deltas) >= 4
    assert "".join(re.sub(r"</?span>", "", d) for d in deltas) == "You said: hello **bold** world"
    [message] = data_of(frames, "message")
    assert "<strong>bold</strong>" in message
    [done] = data_of(frames, "done")
    assert "tokens" in done
    assert events(frames)[-1] == "end"


def test_a_second_message_continues_the_session(web: Client, helper: Agent) -> None:
    stream(web, stream_url(send(web, "agent-helper", "my name is Ada")))
    session_id = ChatSession.objects.get().session_id
    frames = stream(web, stream_url(send(web, "agent-helper", "recall", session_id)))
    assert "Earlier you said: my name is Ada" in data_of(frames, "message")[0]
    assert ChatSession.objects.count() == 1


def test_a_tool_call_is_a_collapsible_step_with_arguments_and_result(
    web: Client, helper: Agent
) -> None:
    frames = stream(web, stream_url(send(web, "agent-helper", "calc: 2+3")))
    assert "Running the calculator tool" in " ".join(data_of(frames, "status"))
    [step] = data_of(frames, "tool")
    assert step.startswith('<details class="step">')
    assert "<code>calculator</code>" in step
    assert "&quot;expression&quot;: &quot;2+3&quot;" in step
    assert "<code>5</code>" in step
    assert "The answer is 5." in data_of(frames, "message")[0]


def test_a_stream_token_works_once(web: Client, helper: Agent) -> None:
    url = stream_url(send(web, "agent-helper", "hello"))
    stream(web, url)
    again = stream(web, url)
    assert events(again) == ["error", "end"]
    assert "no longer streaming" in again[0][1]


def test_another_user_cannot_read_someone_elses_stream(
    web: Client, helper: Agent, other_user: User
) -> None:
    url = stream_url(send(web, "agent-helper", "hello"))
    intruder = Client()
    intruder.force_login(other_user)
    assert events(stream(intruder, url)) == ["error", "end"]


def test_the_stop_button_cancels_the_run(
    web: Client, helper: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODEL_TOKEN_DELAY", "0.02")
    long_answer = "script: " + " ".join(f"word{i}" for i in range(200))
    frames = stream(web, stream_url(send(web, "agent-helper", long_answer)), cancel_on_run=True)
    assert "Stopped" in " ".join(data_of(frames, "status"))
    assert len(data_of(frames, "delta")) < 200
    assert events(frames)[-1] == "end"


def test_cancelling_a_run_that_is_not_yours_is_not_found(web: Client) -> None:
    assert web.post("/agentos/runs/no-such-run/cancel/").status_code == 404


def test_a_provider_failure_is_explained_in_the_conversation(web: Client, helper: Agent) -> None:
    frames = stream(web, stream_url(send(web, "agent-helper", "please fail now")))
    [error] = data_of(frames, "error")
    assert 'role="alert"' in error
    assert "scripted provider failure" in error
    assert "Traceback" not in error
    assert events(frames)[-1] == "end"


def test_agent_output_is_escaped_while_streaming_and_when_finished(
    web: Client, helper: Agent
) -> None:
    frames = stream(web, stream_url(send(web, "agent-helper", f"script: {XSS}")))
    body = "".join(data for _, data in frames)
    assert "<script" not in body
    assert "<img" not in body
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in data_of(frames, "message")[0]


def test_stored_agent_output_is_escaped_on_the_chat_page(web: Client, helper: Agent) -> None:
    result = AgentOSService(helper.owner).send_message("agent-helper", None, f"script: {XSS}")
    page = web.get(f"/agentos/chat/agent-helper/?session={result['session_id']}").content.decode()
    assert "<script>window" not in page
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=" in page


@pytest.mark.parametrize("message", ["", "   "])
def test_an_empty_message_is_refused_in_the_conversation(
    web: Client, helper: Agent, message: str
) -> None:
    response = send(web, "agent-helper", message)
    assert response.status_code == 422
    assert "Write a message first." in response.content.decode()
    assert not ChatSession.objects.exists()


def test_a_message_over_the_limit_is_refused(web: Client, helper: Agent, settings: Any) -> None:
    settings.AGENTOS_MAX_MESSAGE_CHARS = 10
    response = send(web, "agent-helper", "x" * 11)
    assert response.status_code == 422
    assert "longer than 10 characters" in response.content.decode()


def test_sending_when_agents_are_disabled_says_so(web: Client, helper: Agent) -> None:
    with override_settings(AGENTOS_ENABLED=False):
        response = send(web, "agent-helper", "hello")
        page = web.get("/agentos/chat/agent-helper/").content.decode()
    assert response.status_code == 422
    assert "Agents are unavailable" in response.content.decode()
    assert "Agents are unavailable" in page


def test_a_foreign_session_cannot_be_continued(
    web: Client, helper: Agent, other_user: User
) -> None:
    theirs = factories.session(other_user, factories.agent(other_user))
    response = send(web, "agent-helper", "hello", theirs.session_id)
    assert response.status_code == 404
    assert ChatSession.objects.filter(user=helper.owner).count() == 0


def test_sending_without_javascript_runs_the_whole_turn(web: Client, helper: Agent) -> None:
    response = web.post("/agentos/chat/agent-helper/send/", {"message": "calc: 6*7"})
    session = ChatSession.objects.get()
    assert response["Location"] == f"/agentos/chat/agent-helper/?session={session.session_id}"
    page = web.get(response["Location"]).content.decode()
    assert "The answer is 42." in page
    assert '<details class="step">' in page


def test_the_chat_page_shows_history_and_the_composer(web: Client, helper: Agent) -> None:
    first = AgentOSService(helper.owner).send_message("agent-helper", None, "first question")
    AgentOSService(helper.owner).send_message("agent-helper", None, "second question")
    page = web.get(f"/agentos/chat/agent-helper/?session={first['session_id']}").content.decode()
    assert "first question" in page
    assert "second question" in page
    assert 'aria-current="page"' in page
    assert "data-enter-submits" in page
    assert 'href="/agentos/chat/agent-helper/">New session' in page


def test_a_session_opened_under_another_agent_redirects_to_its_own_chat(
    web: Client, helper: Agent, user: User
) -> None:
    other = factories.agent(user, agent_id="agent-other")
    session = factories.session(user, other)
    response = web.get(f"/agentos/chat/agent-helper/?session={session.session_id}")
    assert response["Location"] == f"/agentos/chat/agent-other/?session={session.session_id}"
