from __future__ import annotations

import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.opie.management.selection import select_agents

PROBE_MESSAGE = "Hello! Please introduce yourself in one short sentence."


class Command(BaseCommand):
    help = (
        "Test AgentOS: send a real message through each selected agent and print a table of "
        "agent, provider, status, latency and tokens. Exits non-zero if any agent fails."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--user-id", type=int, help="Test the agents this user can use.")
        parser.add_argument("--agent-id", help="Test only this agent (its public agent_id).")
        parser.add_argument("--message", default=PROBE_MESSAGE, help="The message to send.")

    def handle(self, *args: Any, **options: Any) -> None:
        from apps.opie.agentos.config import AgentsUnavailable
        from apps.opie.agentos.service import AgentOSService

        selected = select_agents(options["user_id"], options["agent_id"])
        if not selected:
            raise CommandError("No agents to test.")
        rows: list[tuple[str, ...]] = []
        for user, agent in selected:
            provider = agent.model_config.provider if agent.model_config else "local"
            started = time.monotonic()
            try:
                result = AgentOSService(user).send_message(agent.agent_id, None, options["message"])
            except AgentsUnavailable as exc:
                raise CommandError(str(exc)) from exc
            latency = f"{(time.monotonic() - started) * 1000:.0f} ms"
            status = result["status"]
            detail = result.get("error") or result["content"][:60].replace("\n", " ")
            tokens = str(result["usage"]["total_tokens"])
            rows.append((agent.agent_id, provider, status, latency, tokens, detail))
        self._print_table(rows)
        failed = [row for row in rows if row[2] != "succeeded"]
        if failed:
            raise CommandError(f"{len(failed)} of {len(rows)} agent(s) failed.")

    def _print_table(self, rows: list[tuple[str, ...]]) -> None:
        header = ("agent", "provider", "status", "latency", "tokens", "answer or error")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write(
                "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
            )
