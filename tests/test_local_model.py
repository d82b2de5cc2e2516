"""The real local model (llama.cpp on gemma-3-270m) end to end through AgentOSService."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from apps.accounts.models import User
from apps.opie.agentos.events import AgentEvent
from apps.opie.agentos.service import AgentOSService
from apps.opie.models import RunRecord
from tests import factories


@pytest.mark.slow_model
def test_it_answers_with_the_real_local_model(user: User, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTOS_MODEL_OVERRIDE")
    config = factories.model_config(user, provider="local")
    factories.agent(user, agent_id="agent-local", model_config=config, tools=["calculator"])
    service = AgentOSService(user)

    result = service.send_message("agent-local", None, "What is 12 * 7?")
    assert result["status"] == "succeeded", result.get("error")
    assert result["content"].strip()
    assert result["usage"]["input_tokens"] > 0
    assert result["usage"]["output_tokens"] > 0
    [call] = result["tool_calls"]
    assert call["name"] == "calculator"
    assert call["result"] == "84"
    assert RunRecord.objects.get(run_id=result["run_id"]).model.startswith("gemma")

    async def stream() -> list[AgentEvent]:
        return [
            event
            async for event in service.astream_message(
                "agent-local", "Tell me about the sea.", result["session_id"]
            )
        ]

    events = async_to_sync(stream)()
    assert events[-1].type == "run.succeeded", events[-1].data
    assert sum(event.type == "assistant.delta" for event in events) > 1
