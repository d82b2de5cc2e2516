from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.opie.management.selection import select_agents


class Command(BaseCommand):
    help = (
        "Sync Django agents with AgentOS: build each selected agent, create missing vector "
        "tables and indexes for its knowledge bases, and warm the agent cache."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--user-id", type=int, help="Only the agents this user can use.")
        parser.add_argument("--agent-id", help="Only this agent (its public agent_id).")
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be synced; change nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from apps.opie.agentos.config import AgentsUnavailable, agent_os_config
        from apps.opie.agentos.knowledge import ensure_tables

        selected = select_agents(options["user_id"], options["agent_id"])
        dry_run = options["dry_run"]
        if not selected:
            self.stdout.write("No agents to sync.")
            return
        failures = 0
        synced_bases: set[int] = set()
        for user, agent in selected:
            bases = [kb for kb in agent.knowledge_bases.all() if kb.pk not in synced_bases]
            label = f"{agent.agent_id} ({agent.name}) as {user.email}"
            if dry_run:
                tables = ", ".join(kb.name for kb in bases) or "none"
                self.stdout.write(f"would build {label}; knowledge tables: {tables}")
                continue
            try:
                for kb in bases:
                    ensure_tables(kb)
                    synced_bases.add(kb.pk)
                agent_os_config.get_agent(agent, user)
            except AgentsUnavailable as exc:
                raise CommandError(str(exc)) from exc
            except Exception as exc:
                failures += 1
                self.stderr.write(f"failed {label}: {exc}")
                continue
            self.stdout.write(f"synced {label}; knowledge bases: {len(bases)}")
        verb = "would sync" if dry_run else "synced"
        self.stdout.write(f"{verb} {len(selected) - failures} of {len(selected)} agents")
        if failures:
            raise CommandError(f"{failures} agent(s) failed to sync.")
