"""Start-up time of the AgentOS server, lazy agno import, and memory per cached agent.

- `agentos_start` launched in a subprocess: seconds to the first 200 from /health and to the
  first authenticated 200 from GET /agents.
- Django started in a subprocess serving a page: is agno imported? (target: no).
- In this process: RSS growth per user after building one agent for each of N users
  (target < 2 MB), and RSS while 10,000 (user, agent) keys pass through a cache bounded by
  AGENTOS_CACHE_MAX_AGENTS (target: length stays at the bound, RSS flat after it fills).
Prints one JSON object per figure.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from typing import Any

import httpx

from bench._django import ROOT, setup
from bench.concurrency import HOST, free_port, issue_token

MB = 1024 * 1024
READY_TIMEOUT = 120.0
EMAIL_PREFIX = "bench-mem-"
AGENT_PREFIX = "bench-mem-"
PROBE = """
import sys, django
django.setup()
from django.urls import get_resolver
get_resolver().url_patterns
from django.test import Client
status = Client().get("/account/login/").status_code
print(status, any(m == "agno" or m.startswith("agno.") for m in sys.modules))
"""


def rss_bytes() -> int:
    """This process's resident set size, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def settled_rss() -> int:
    """RSS after a full garbage collection."""
    gc.collect()
    return rss_bytes()


def time_agentos_start(token: str) -> dict[str, float]:
    """Launch agentos_start; seconds to first healthy answer and first authenticated listing."""
    port = free_port()
    env = {**os.environ, "AGENTOS_AUTO_RELOAD": "false", "AGNO_TELEMETRY": "false"}
    command = [sys.executable, "manage.py", "agentos_start", "--host", HOST, "--port", str(port)]
    base = f"http://{HOST}:{port}"
    found: dict[str, float] = {}
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            with httpx.Client(timeout=5.0) as client:
                while len(found) < 2 and time.perf_counter() - start < READY_TIMEOUT:
                    if process.poll() is not None:
                        log.seek(0)
                        tail = log.read().decode(errors="replace")[-2000:]
                        raise RuntimeError(f"agentos_start exited: {tail}")
                    with contextlib.suppress(httpx.HTTPError):
                        if "health_s" not in found:
                            if client.get(f"{base}/health").status_code == 200:
                                found["health_s"] = time.perf_counter() - start
                        else:
                            auth = {"Authorization": f"Bearer {token}"}
                            if client.get(f"{base}/agents", headers=auth).status_code == 200:
                                found["agents_s"] = time.perf_counter() - start
                    time.sleep(0.02)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
    if len(found) < 2:
        raise RuntimeError(f"agentos_start not ready in {READY_TIMEOUT:.0f}s: {found}")
    return found


def probe_lazy_agno() -> dict[str, Any]:
    """Start Django in a subprocess, serve a page, and report whether agno got imported."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    status, imported = done.stdout.strip().splitlines()[-1].split()
    return {
        "bench": "startup_lazy_agno",
        "page_status": int(status),
        "agno_imported_by_web_page": imported == "True",
        "django_start_and_page_s": round(elapsed, 2),
        "target": "agno not imported",
    }


def make_rows(users: int, agents: int) -> tuple[list[Any], list[Any]]:
    """Create bench users and agents in bulk."""
    from apps.accounts.models import User
    from apps.opie.models import Agent

    cleanup()
    rows = [User(email=f"{EMAIL_PREFIX}{i}@opie.local") for i in range(users)]
    for row in rows:
        row.set_unusable_password()
    user_rows = User.objects.bulk_create(rows)
    agent_rows = Agent.objects.bulk_create(
        [
            Agent(agent_id=f"{AGENT_PREFIX}{j}", owner=user_rows[j % users], name=f"Bench {j}")
            for j in range(agents)
        ]
    )
    return user_rows, agent_rows


def cleanup() -> None:
    """Delete every bench row this script creates."""
    from django.db import DatabaseError

    from apps.accounts.models import APIToken, User
    from apps.opie.models import Agent

    Agent.objects.filter(agent_id__startswith=AGENT_PREFIX).delete()
    APIToken.objects.filter(user__email__startswith=EMAIL_PREFIX).delete()
    try:
        User.objects.filter(email__startswith=EMAIL_PREFIX).delete()
    except DatabaseError as exc:  # the audit log's table may not be migrated yet
        print(f"bench users left in place: {exc}", file=sys.stderr)


def memory_per_user(users: list[Any], agents: list[Any]) -> dict[str, Any]:
    """RSS growth per user with one cached agent each (after warming one build up)."""
    from apps.opie.agentos.config import agent_os_config

    agent_os_config.clear()
    agent_os_config.cache.max_entries = max(agent_os_config.cache.max_entries, len(users))
    # The first builds import agno and open the storage pool: not per-user memory.
    for agent in agents[:2]:
        agent_os_config.create_agent_from_django(agent, users[0])
    before = settled_rss()
    tracemalloc.start()
    for i, user in enumerate(users):
        agent_os_config.get_agent(agents[i % len(agents)], user)
    gc.collect()
    traced, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = settled_rss()
    per_user = (after - before) / len(users)
    return {
        "bench": "memory_per_cached_user",
        "users": len(users),
        "cached": len(agent_os_config.cache),
        "rss_before_mb": round(before / MB, 1),
        "rss_after_mb": round(after / MB, 1),
        "per_user_mb": round(per_user / MB, 3),
        "per_user_traced_kb": round(traced / len(users) / 1024, 1),
        "target_mb": 2.0,
        "meets_target": per_user < 2 * MB,
    }


def cache_bound(users: list[Any], agents: list[Any], bound: int) -> list[dict[str, Any]]:
    """Pass len(users) x len(agents) keys through the bounded cache; sample its size and RSS."""
    from apps.opie.agentos.config import agent_os_config

    agent_os_config.clear()
    agent_os_config.cache.max_entries = bound
    keys = [(user, agent) for agent in agents for user in users]
    step = max(1, len(keys) // 5)
    samples: list[dict[str, Any]] = []
    start = time.perf_counter()
    for n, (user, agent) in enumerate(keys, start=1):
        agent_os_config.get_agent(agent, user)
        if n % step == 0 or n == len(keys):
            samples.append({"keys": n, "len": len(agent_os_config.cache), "rss": settled_rss()})
    elapsed = time.perf_counter() - start
    full = next(s for s in samples if s["keys"] >= bound)
    last = samples[-1]
    growth = (last["rss"] - full["rss"]) / full["rss"]
    figures = [
        {
            "bench": "cache_bound",
            "keys": s["keys"],
            "cache_len": s["len"],
            "rss_mb": round(s["rss"] / MB, 1),
        }
        for s in samples
    ]
    figures.append(
        {
            "bench": "cache_bound_summary",
            "keys": len(keys),
            "bound": bound,
            "max_len_seen": max(s["len"] for s in samples),
            "rss_at_bound_mb": round(full["rss"] / MB, 1),
            "rss_end_mb": round(last["rss"] / MB, 1),
            "rss_growth_after_bound_pct": round(100 * growth, 1),
            "builds_per_s": round(len(keys) / elapsed, 1),
            "bounded": max(s["len"] for s in samples) <= bound,
        }
    )
    return figures


def main() -> None:
    """Run every measurement and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args()
    setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from django.conf import settings

    from apps.opie.agentos.config import DEFAULT_MAX_CACHED_AGENTS

    bound = getattr(settings, "AGENTOS_CACHE_MAX_AGENTS", DEFAULT_MAX_CACHED_AGENTS)
    n_users, n_agents, starts = (50, 20, 1) if args.quick else (200, 50, 3)
    if args.quick:
        bound = min(bound, 200)
    figures: list[dict[str, Any]] = [probe_lazy_agno()]
    try:
        users, agents = make_rows(n_users, n_agents)
        token = issue_token(users[0], "bench-startup")
        timings = [time_agentos_start(token) for _ in range(starts)]
        figures.append(
            {
                "bench": "startup_agentos_start",
                "runs": starts,
                "to_health_200_s": round(statistics.median(t["health_s"] for t in timings), 2),
                "to_agents_200_s": round(statistics.median(t["agents_s"] for t in timings), 2),
            }
        )
        figures.append(memory_per_user(users, agents))
        figures.extend(cache_bound(users, agents, bound))
    finally:
        cleanup()
    for line in figures:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
