from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from apps.accounts.models import User
from apps.opie.agentos.config import agent_os_config
from apps.opie.models import Agent, RunRecord
from tests import factories


@pytest.fixture
def helper(user: User) -> Agent:
    return factories.agent(user, agent_id="agent-helper", tools=["calculator"])


def test_agentos_test_prints_a_table_and_succeeds(
    helper: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("agentos_test", "--agent-id", "agent-helper", "--message", "calc: 2 + 2")
    out = capsys.readouterr().out
    header, row = out.strip().splitlines()
    assert header.split()[:5] == ["agent", "provider", "status", "latency", "tokens"]
    assert row.split()[:3] == ["agent-helper", "local", "succeeded"]
    assert "The answer is 4." in row
    assert RunRecord.objects.filter(agent=helper, status="succeeded").count() == 1


def test_agentos_test_fails_when_an_agent_fails(helper: Agent) -> None:
    with pytest.raises(CommandError, match="1 of 1 agent"):
        call_command("agentos_test", "--user-id", str(helper.owner_id), "--message", "fail now")


def test_agentos_test_tests_every_agent_of_a_user(
    user: User, other_user: User, helper: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    factories.agent(user, agent_id="agent-second")
    factories.agent(other_user, agent_id="agent-foreign")
    call_command("agentos_test", "--user-id", str(user.pk))
    out = capsys.readouterr().out
    assert "agent-helper" in out
    assert "agent-second" in out
    assert "agent-foreign" not in out


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("agentos_test", ["--user-id", "999999"], "No active user with id 999999"),
        ("agentos_test", ["--agent-id", "agent-nope"], "No active agent 'agent-nope'"),
        ("agentos_sync", ["--user-id", "999999"], "No active user with id 999999"),
        ("agentos_sync", ["--agent-id", "agent-nope"], "No active agent 'agent-nope'"),
    ],
)
def test_commands_name_what_they_could_not_find(
    helper: Agent, command: str, args: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        call_command(command, *args)


def test_a_foreign_agent_is_not_found_for_a_user(helper: Agent, other_user: User) -> None:
    with pytest.raises(CommandError, match="No active agent"):
        call_command("agentos_test", "--user-id", str(other_user.pk), "--agent-id", "agent-helper")


def test_agentos_sync_dry_run_changes_nothing(
    helper: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("agentos_sync", "--dry-run")
    out = capsys.readouterr().out
    assert "would build agent-helper" in out
    assert "would sync 1 of 1 agents" in out
    assert len(agent_os_config.cache) == 0


def test_agentos_sync_builds_and_warms_the_cache(
    helper: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("agentos_sync", "--agent-id", "agent-helper")
    assert "synced 1 of 1 agents" in capsys.readouterr().out
    hits = agent_os_config.cache.hits
    agent_os_config.get_agent(helper, helper.owner)
    assert agent_os_config.cache.hits == hits + 1
