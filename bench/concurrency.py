"""Concurrent streaming chats against the product (uvicorn) and agno's standalone AgentOS.

The servers run on loopback in subprocesses with the scripted model at 1 s to the first
token, then 50 tokens over 1 s (a 2 s turn): agno's AgentOS in one process (the anchor), and
Opie under uvicorn with 1 worker (like for like) and with 2 (one per core of the reference
machine). A bounded async load generator holds N clients, each running a fixed number of
turns back to back. Prints one JSON object per figure, with each server's CPU per turn.
Targets: throughput >= 85% of ideal (N / 2 s), p99 first byte <= 1.5x the model's 1 s, zero
errors, and no slower than the standalone AgentOS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench._django import ROOT, setup

HOST = "127.0.0.1"
FIRST_TOKEN_DELAY = 1.0
ANSWER_TOKENS = 50
TOKEN_DELAY = 0.02
TURN_TIME = FIRST_TOKEN_DELAY + ANSWER_TOKENS * TOKEN_DELAY
MODEL_ENV = {
    "AGNO_TELEMETRY": "false",
    "AGENTOS_MODEL_OVERRIDE": "tests.fakes:make_model",
    "FAKE_MODEL_FIRST_TOKEN_DELAY": str(FIRST_TOKEN_DELAY),
    "FAKE_MODEL_TOKEN_DELAY": str(TOKEN_DELAY),
    "FAKE_MODEL_ANSWER_TOKENS": str(ANSWER_TOKENS),
    "API_RATE": "1000000/min",
    "API_MESSAGE_RATE": "1000000/min",
    # Production-like: no DEBUG bookkeeping; plain HTTP on loopback.
    "DEBUG": "false",
    "SECURE_SSL_REDIRECT": "false",
}
BENCH_EMAIL = "bench-concurrency@opie.local"
BENCH_AGENT_ID = "bench-concurrency"
MESSAGE = "hello there, please answer at length"
READY_TIMEOUT = 120.0
WARM_UP_TURNS = 20
# Runs of one server at one level differ by up to 5% of throughput on a two-core machine:
# "no slower" allows for that, and `throughput_vs_anchor` prints the ratio itself.
NOISE = 0.95


@dataclass
class Turn:
    """What one streamed turn took, or why it failed."""

    ttfb: float | None = None
    total: float | None = None
    tail: float | None = None  # from the final event to the end of the stream
    error: str | None = None
    status: int | None = None
    session_id: str | None = None


@dataclass
class Target:
    """A server under load: how to start a turn and how to read its events."""

    name: str
    base_url: str
    request: Callable[[httpx.AsyncClient, str | None], Any]
    first_event: str
    ok_event: str
    error_events: frozenset[str] = field(default_factory=frozenset)
    pid: int | None = None  # the server process, for its CPU time per turn


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a server has used so far, its worker processes included."""
    if pid is None:
        return 0.0
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], pct: float) -> float | None:
    """The nearest-rank percentile of values (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def stream_turn(
    client: httpx.AsyncClient, target: Target, session_id: str | None = None
) -> Turn:
    """Run one streamed turn and time its first delta and its end."""
    start = time.perf_counter()
    turn = Turn()
    event = ""
    finished = False
    final_at = 0.0
    try:
        async with target.request(client, session_id) as response:
            turn.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                return Turn(error=f"http {response.status_code}", status=response.status_code)
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[len("event:") :].strip()
                    if event == target.first_event and turn.ttfb is None:
                        turn.ttfb = time.perf_counter() - start
                    elif event in target.error_events:
                        turn.error = f"event {event}"
                    elif event == target.ok_event:
                        finished = True
                        final_at = time.perf_counter()
                elif finished and turn.session_id is None and line.startswith("data:"):
                    turn.session_id = json.loads(line[len("data:") :]).get("session_id")
    except (httpx.HTTPError, OSError) as exc:
        return Turn(error=type(exc).__name__)
    turn.total = time.perf_counter() - start
    if finished:
        turn.tail = start + turn.total - final_at
    if turn.error is None and (not finished or turn.ttfb is None):
        turn.error = "stream ended without a completed answer"
    return turn


async def drive(target: Target, concurrency: int, turns: int, bound: float) -> dict[str, Any]:
    """Hold `concurrency` clients, each running `turns` turns, within `bound` seconds."""
    results: list[Turn] = []
    limits = httpx.Limits(max_connections=concurrency + 10, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(60.0, connect=10.0)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in range(turns):
            results.append(await stream_turn(client, target))

    async with httpx.AsyncClient(base_url=target.base_url, limits=limits, timeout=timeout) as c:
        start, cpu_start = time.perf_counter(), cpu_seconds(target.pid)
        tasks = [asyncio.create_task(client_loop(c)) for _ in range(concurrency)]
        _done, pending = await asyncio.wait(tasks, timeout=bound)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - start
        cpu = cpu_seconds(target.pid) - cpu_start
    expected = concurrency * turns
    ok = [t for t in results if t.error is None]
    errors = [t.error for t in results if t.error is not None]
    errors += ["timed out"] * (expected - len(results))
    ttfbs = [t.ttfb for t in ok if t.ttfb is not None]
    throughput = len(ok) / wall if wall else 0.0
    ideal = concurrency / TURN_TIME
    p50, p99 = percentile(ttfbs, 50), percentile(ttfbs, 99)
    turn_p50 = percentile([t.total for t in ok if t.total is not None], 50)
    tail_p50 = percentile([t.tail for t in ok if t.tail is not None], 50)
    return {
        "bench": "concurrency",
        "server": target.name,
        "concurrency": concurrency,
        "turns": expected,
        "completed": len(ok),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:3],
        "wall_s": round(wall, 2),
        "throughput_tps": round(throughput, 2),
        "ideal_tps": round(ideal, 2),
        "pct_of_ideal": round(100 * throughput / ideal, 1),
        "ttfb_p50_s": round(p50, 3) if p50 is not None else None,
        "ttfb_p99_s": round(p99, 3) if p99 is not None else None,
        "ttfb_p99_vs_model": round(p99 / FIRST_TOKEN_DELAY, 2) if p99 is not None else None,
        "turn_p50_s": round(turn_p50, 3) if turn_p50 is not None else None,
        "end_after_final_event_p50_ms": round(1000 * tail_p50, 1) if tail_p50 is not None else None,
        "server_cpu_ms_per_turn": round(1000 * cpu / len(ok), 1) if ok else None,
    }


def wait_ready(url: str, process: subprocess.Popen[bytes], headers: dict[str, str]) -> None:
    """Poll url until the server answers (anything below 500), or fail."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {url}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, headers=headers, timeout=2.0).status_code < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"server not ready in {READY_TIMEOUT:.0f}s: {url}")


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server subprocess for the duration of the block, then stop it."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed after the server stops
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        # The server's own account of failures goes to stderr, for the reader of the figures.
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
        log.close()
        errors = Counter(line for line in lines if "Error:" in line or "Exception:" in line)
        if errors:
            print(f"{command[2]}: errors logged by the server:", file=sys.stderr)
            for line, count in errors.most_common(3):
                print(f"  {count} x {line[:300]}", file=sys.stderr)


def serve_standalone(port: int, agent_pk: int, user_pk: int) -> None:
    """Serve agno's own AgentOS with the same Django agent, no auth (the anchor)."""
    setup()
    import uvicorn
    from agno.os import AgentOS

    from apps.accounts.models import User
    from apps.opie.agentos.config import agent_os_config
    from apps.opie.models import Agent

    row = Agent.objects.get(pk=agent_pk)
    user = User.objects.get(pk=user_pk)
    agent = agent_os_config.create_agent_from_django(row, user)
    # agno alone: without Opie's usage bookkeeping hook.
    agent.post_hooks = None
    agent_os = AgentOS(agents=[agent], telemetry=False)
    uvicorn.run(agent_os.get_app(), host=HOST, port=port, log_level="warning")


def prepare() -> tuple[int, int, str, str]:
    """Create the bench user, agent and token; return (user pk, agent pk, agent id, token)."""
    from apps.accounts.models import User
    from apps.opie.models import Agent

    user, _ = User.objects.get_or_create(email=BENCH_EMAIL)
    Agent.objects.filter(agent_id=BENCH_AGENT_ID).delete()
    row = Agent.objects.create(
        agent_id=BENCH_AGENT_ID, owner=user, name="Bench concurrency", tools=[]
    )
    return user.pk, row.pk, row.agent_id, issue_token(user, "bench-concurrency")


def issue_token(user: Any, name: str) -> str:
    """A raw API token for user (directly when the audit log's table is not migrated yet)."""
    from django.db import DatabaseError

    from apps.accounts.models import TOKEN_PREFIX, APIToken, hash_token
    from apps.accounts.tokens import token_create

    try:
        return token_create(user=user, name=name)[1]
    except DatabaseError:
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        APIToken.objects.create(
            user=user, name=name, prefix=raw[: len(TOKEN_PREFIX) + 6], key_hash=hash_token(raw)
        )
        return raw


def cleanup() -> None:
    """Delete the bench user and everything it owns."""
    from django.db import DatabaseError

    from apps.accounts.models import APIToken, User
    from apps.opie.models import Agent

    Agent.objects.filter(agent_id=BENCH_AGENT_ID).delete()
    APIToken.objects.filter(user__email=BENCH_EMAIL).delete()
    try:
        User.objects.filter(email=BENCH_EMAIL).delete()
    except DatabaseError as exc:  # the audit log's table may not be migrated yet
        print(f"bench user left in place: {exc}", file=sys.stderr)


def opie_target(port: int, agent_id: str, token: str) -> Target:
    """Opie's streaming send-message endpoint as a load target."""
    auth = {"Authorization": f"Bearer {token}"}

    def request(client: httpx.AsyncClient, session_id: str | None) -> Any:
        body = {"agent_id": agent_id, "message": MESSAGE}
        if session_id:
            body["session_id"] = session_id
        return client.stream(
            "POST", "/api/v1/agentos/send-message/stream/", json=body, headers=auth
        )

    return Target(
        name="opie",
        base_url=f"http://{HOST}:{port}",
        request=request,
        first_event="assistant.delta",
        ok_event="run.succeeded",
        error_events=frozenset({"run.failed", "run.cancelled"}),
    )


def uvicorn_command(port: int, workers: int = 1) -> list[str]:
    """The product served as in production: uvicorn workers on loopback."""
    return [
        *(sys.executable, "-m", "uvicorn", "settings.asgi:application"),
        *("--host", HOST, "--port", str(port), "--workers", str(workers)),
        *("--log-level", "warning", "--no-access-log"),
    ]


def run(args: argparse.Namespace) -> None:
    """Start both servers, drive each concurrency level on both, print figures."""
    setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    user_pk, agent_pk, agent_id, token = prepare()
    env = {**os.environ, **MODEL_ENV, "SECRET_KEY": secrets.token_urlsafe(50)}
    anchor_port = free_port()
    auth = {"Authorization": f"Bearer {token}"}

    def anchor_request(client: httpx.AsyncClient, session_id: str | None) -> Any:
        return client.stream(
            "POST",
            f"/agents/{agent_id}/runs",
            data={"message": MESSAGE, "stream": "true", "user_id": str(user_pk)},
        )

    anchor = Target(
        name="agno_agentos",
        base_url=f"http://{HOST}:{anchor_port}",
        request=anchor_request,
        first_event="RunContent",
        ok_event="RunCompleted",
        error_events=frozenset({"RunError", "RunCancelled"}),
    )
    anchor_cmd = [
        *(sys.executable, "-m", "bench.concurrency", "--serve-standalone"),
        *("--port", str(anchor_port), "--agent-pk", str(agent_pk), "--user-pk", str(user_pk)),
    ]
    levels = [int(level) for level in args.levels.split(",")]
    turns = 1 if args.quick else args.turns
    try:
        with contextlib.ExitStack() as stack:
            anchor_proc = stack.enter_context(server(anchor_cmd, env))
            wait_ready(f"{anchor.base_url}/agents", anchor_proc, {})
            anchor.pid = anchor_proc.pid
            ours: list[Target] = []
            for workers in [int(count) for count in args.workers.split(",")]:
                port = free_port()
                target = opie_target(port, agent_id, token)
                if workers > 1:
                    target.name = f"opie_{workers}_workers"
                process = stack.enter_context(server(uvicorn_command(port, workers), env))
                wait_ready(f"{target.base_url}/api/v1/agentos/agents/", process, auth)
                target.pid = process.pid
                ours.append(target)
            figures = asyncio.run(measure(anchor, ours, levels, turns, args.bound))
    finally:
        cleanup()
    for line in figures:
        print(json.dumps(line), flush=True)


async def measure(
    anchor: Target, ours: list[Target], levels: list[int], turns: int, bound: float
) -> list[dict[str, Any]]:
    """Warm every server up, then drive each level on the anchor and on each of ours in turn."""
    figures: list[dict[str, Any]] = []
    for target in [anchor, *ours]:
        # Enough turns that every worker process has loaded agno and built the agent.
        await drive(target, WARM_UP_TURNS, 1, bound)
    for level in levels:
        theirs = await drive(anchor, level, turns, bound)
        figures.append(theirs)
        for target in ours:
            mine = await drive(target, level, turns, bound)
            figures.extend([mine, compare(mine, theirs)])
    return figures


def compare(ours: dict[str, Any], anchor: dict[str, Any]) -> dict[str, Any]:
    """Ours against the targets and the anchor, side by side."""
    p99 = ours["ttfb_p99_s"]
    return {
        "bench": "concurrency_vs_anchor",
        "server": ours["server"],
        "concurrency": ours["concurrency"],
        "pct_of_ideal": f"{ours['pct_of_ideal']} vs {anchor['pct_of_ideal']}",
        "throughput_vs_anchor": round(ours["throughput_tps"] / anchor["throughput_tps"], 3)
        if anchor["throughput_tps"]
        else None,
        "ttfb_p50_s": f"{ours['ttfb_p50_s']} vs {anchor['ttfb_p50_s']}",
        "ttfb_p99_s": f"{p99} vs {anchor['ttfb_p99_s']}",
        "errors": f"{ours['errors']} vs {anchor['errors']}",
        "server_cpu_ms_per_turn": (
            f"{ours['server_cpu_ms_per_turn']} vs {anchor['server_cpu_ms_per_turn']}"
        ),
        "meets_ideal_85": ours["pct_of_ideal"] >= 85,
        "meets_p99_1_5x": p99 is not None and p99 <= 1.5 * FIRST_TOKEN_DELAY,
        "zero_errors": ours["errors"] == 0,
        "not_slower_than_anchor": ours["throughput_tps"] >= NOISE * anchor["throughput_tps"],
    }


def main() -> None:
    """Parse arguments and run the benchmark (or serve the anchor)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one turn per client")
    parser.add_argument(
        "--turns",
        type=int,
        default=20,
        help="turns per client: enough for a steady state, as every client starts at once",
    )
    parser.add_argument("--bound", type=float, default=120.0, help="seconds per load phase")
    parser.add_argument("--levels", default="50,100", help="concurrency levels, comma-separated")
    parser.add_argument(
        "--workers",
        default="1,2",
        help="uvicorn worker counts to measure Opie at: 1 is like for like with the "
        "single-process anchor, 2 is one per core of the reference machine",
    )
    parser.add_argument("--serve-standalone", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--agent-pk", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user-pk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_standalone:
        serve_standalone(args.port, args.agent_pk, args.user_pk)
        return
    run(args)


if __name__ == "__main__":
    main()
