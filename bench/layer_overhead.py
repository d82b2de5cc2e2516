"""Per-turn overhead of Opie's layer over bare agno, plus agent build and cache-hit times.

Both paths use the same zero-latency scripted model and the same database, interleaved in
one run so machine noise hits both alike. Prints one JSON object per line.
Targets: service/bare median ratio <= 1.10; cache hit < 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

from bench._django import setup


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 3),
    }


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args()
    setup()

    from apps.accounts.models import User
    from apps.opie.agentos import runs
    from apps.opie.agentos.config import agent_os_config
    from apps.opie.agentos.service import AgentOSService
    from apps.opie.models import Agent

    user, _ = User.objects.get_or_create(email="bench-layer@opie.local")
    row, _ = Agent.objects.get_or_create(
        agent_id="bench-layer", defaults={"owner": user, "name": "Bench", "tools": ["calculator"]}
    )
    service = AgentOSService(user)
    # The same agent definition run by agno alone: no Opie lookup, session claim or bookkeeping.
    bare = agent_os_config.create_agent_from_django(row, user)
    bare.post_hooks = None

    async def turns() -> tuple[list[float], list[float], list[float]]:
        ours: list[float] = []
        recorded: list[float] = []
        theirs: list[float] = []
        ours_session = theirs_session = ""
        for i in range(args.turns + 20):
            if i % 20 == 0:
                ours_session, theirs_session = str(uuid.uuid4()), str(uuid.uuid4())
            start = time.perf_counter()
            await bare.arun("hello there", session_id=theirs_session, user_id=str(user.pk))
            bare_time = time.perf_counter() - start
            start = time.perf_counter()
            await service.asend_message("bench-layer", "hello there", ours_session)
            ours_time = time.perf_counter() - start
            # Usage bookkeeping runs after the answer; finish it before the next bare turn so
            # it does not slow that one down, and report it separately.
            await runs.drain()
            recorded_time = time.perf_counter() - start
            if i >= 20:
                theirs.append(bare_time)
                ours.append(ours_time)
                recorded.append(recorded_time)
        return ours, recorded, theirs

    ours, recorded, theirs = asyncio.run(turns())
    ratio = statistics.median(ours) / statistics.median(theirs)
    print(json.dumps({"bench": "layer_overhead", "path": "bare_agno_arun", **_ms(theirs)}))
    print(json.dumps({"bench": "layer_overhead", "path": "service_send_message", **_ms(ours)}))
    print(
        json.dumps({"bench": "layer_overhead", "path": "service_until_recorded", **_ms(recorded)})
    )
    print(json.dumps({"bench": "layer_overhead", "ratio_p50": round(ratio, 3), "target": 1.10}))

    builds = []
    for _ in range(20):
        start = time.perf_counter()
        agent_os_config.create_agent_from_django(row, user)
        builds.append(time.perf_counter() - start)
    agent_os_config.get_agent(row, user)
    hits = []
    for _ in range(2000):
        start = time.perf_counter()
        agent_os_config.get_agent(row, user)
        hits.append(time.perf_counter() - start)
    print(json.dumps({"bench": "agent_cache", "cold_build": _ms(builds), "warm_hit": _ms(hits)}))
    row.delete()


if __name__ == "__main__":
    main()
