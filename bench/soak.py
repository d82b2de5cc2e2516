"""Soak: the product under 50 concurrent streaming chats for 10 minutes, scripted model.

uvicorn serves the product on loopback with the scripted model of the concurrency bench (1 s
to the first token, then 50 tokens over 1 s). Each of N clients chats without pause, carrying
on one session for `--session-turns` turns before starting the next, as people do. The
server's resident memory is sampled throughout. Targets: zero 5xx and resident memory growth
under 10% from the end of the warm-up (the first 10% of the run, at least 30 s) to the end.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import time
from collections import Counter
from typing import Any

import httpx

from bench._django import setup
from bench.concurrency import (
    MODEL_ENV,
    TURN_TIME,
    Target,
    Turn,
    cleanup,
    free_port,
    opie_target,
    percentile,
    prepare,
    server,
    stream_turn,
    uvicorn_command,
    wait_ready,
)

SAMPLE_EVERY = 5.0


def rss_of(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def soak(
    target: Target, pid: int, concurrency: int, seconds: float, session_turns: int
) -> dict[str, Any]:
    """Drive `concurrency` chatting clients for `seconds`, sampling the server's RSS."""
    turns: list[Turn] = []
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    deadline = start + seconds
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency)

    async def chat(client: httpx.AsyncClient) -> None:
        session_id, in_session = None, 0
        while time.perf_counter() < deadline:
            turn = await stream_turn(client, target, session_id)
            turns.append(turn)
            in_session += 1
            if turn.error is not None or in_session >= session_turns:
                session_id, in_session = None, 0
            else:
                session_id = turn.session_id

    async def sample() -> None:
        while time.perf_counter() < deadline:
            samples.append((time.perf_counter() - start, rss_of(pid)))
            await asyncio.sleep(SAMPLE_EVERY)
        samples.append((time.perf_counter() - start, rss_of(pid)))

    timeout = httpx.Timeout(60.0, connect=10.0)
    async with httpx.AsyncClient(base_url=target.base_url, limits=limits, timeout=timeout) as c:
        await asyncio.gather(sample(), *(chat(c) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    warm_up = max(30.0, seconds / 10)
    after_warm_up = [rss for at, rss in samples if at >= warm_up] or [samples[-1][1]]
    baseline, final = after_warm_up[0], after_warm_up[-1]
    errors = Counter(t.error for t in turns if t.error is not None)
    ok = [t for t in turns if t.error is None]
    ttfbs = [t.ttfb for t in ok if t.ttfb is not None]
    p50, p99 = percentile(ttfbs, 50), percentile(ttfbs, 99)
    five_xx = sum(1 for t in turns if t.status is not None and t.status >= 500)
    growth = 100 * (final - baseline) / baseline if baseline else 0.0
    return {
        "bench": "soak",
        "concurrency": concurrency,
        "minutes": round(wall / 60, 1),
        "turns": len(turns),
        "completed": len(ok),
        "http_5xx": five_xx,
        "errors": sum(errors.values()),
        "error_kinds": sorted(str(kind) for kind in errors)[:3],
        "pct_of_ideal": round(100 * len(ok) / wall / (concurrency / TURN_TIME), 1),
        "ttfb_p50_s": round(p50, 3) if p50 is not None else None,
        "ttfb_p99_s": round(p99, 3) if p99 is not None else None,
        "rss_after_warm_up_mb": round(baseline / 2**20, 1),
        "rss_final_mb": round(final / 2**20, 1),
        "rss_max_mb": round(max(rss for _, rss in samples) / 2**20, 1),
        "rss_growth_pct": round(growth, 1),
        "meets_zero_5xx": five_xx == 0,
        "meets_rss_growth_10": growth < 10,
    }


def main() -> None:
    """Serve the product, soak it, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--session-turns", type=int, default=10)
    args = parser.parse_args()
    setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    _user_pk, _agent_pk, agent_id, token = prepare()
    env = {**os.environ, **MODEL_ENV, "SECRET_KEY": secrets.token_urlsafe(50)}
    port = free_port()
    target = opie_target(port, agent_id, token)
    try:
        with server(uvicorn_command(port), env) as process:
            auth = {"Authorization": f"Bearer {token}"}
            wait_ready(f"{target.base_url}/api/v1/agentos/agents/", process, auth)
            figures = asyncio.run(
                soak(target, process.pid, args.concurrency, args.minutes * 60, args.session_turns)
            )
    finally:
        cleanup()
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
