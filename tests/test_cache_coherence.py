"""An edit in one process rebuilds the agent in every other process sharing Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from apps.accounts.models import User
from tests import factories
from tests.conftest import ROOT, database_url

WORKER = """
import sys, django
django.setup()
from apps.accounts.models import User
from apps.opie.agentos.config import agent_os_config
from apps.opie.models import Agent
for line in sys.stdin:
    row = Agent.objects.get(agent_id="agent-shared")
    built = agent_os_config.get_agent(row, User.objects.get(pk=row.owner_id))
    print("AGENT", id(built), built.instructions[0], flush=True)
"""

EDITOR = """
import sys, django
django.setup()
from apps.opie.models import Agent
row = Agent.objects.get(agent_id="agent-shared")
row.instructions = sys.argv[1]
row.save()
"""


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": redis_url,
    }


@pytest.fixture
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", WORKER],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield proc
    proc.kill()
    proc.wait()


def ask(proc: subprocess.Popen[str]) -> tuple[str, str]:
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.write("get\n")
    proc.stdin.flush()
    # agno logs to stdout too; our answers are the lines marked AGENT.
    while not (line := proc.stdout.readline()).startswith("AGENT "):
        assert line, "the worker exited"
    _, ident, instructions = line.split(" ", 2)
    return ident, instructions.strip()


@pytest.mark.django_db(transaction=True)
def test_an_edit_in_another_process_rebuilds_the_agent(
    user: User, env: dict[str, str], worker: subprocess.Popen[str]
) -> None:
    factories.agent(user, agent_id="agent-shared", instructions="Version one.")
    first = ask(worker)
    assert first[1] == "Version one."
    assert ask(worker) == first, "a second use is a cache hit"
    subprocess.run(  # noqa: S603
        [sys.executable, "-c", EDITOR, "Version two."], cwd=ROOT, env=env, check=True
    )
    rebuilt = ask(worker)
    assert rebuilt[1] == "Version two."
    assert rebuilt[0] != first[0]
