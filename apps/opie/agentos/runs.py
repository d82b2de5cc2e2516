"""Running a turn on an agno agent, recording it, and reading sessions back from agno's store.

A turn runs in its own task and feeds a queue: the reader may leave (a closed browser tab, a
dropped SSE connection) and the turn still completes and is saved in the session.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from asgiref.sync import SyncToAsync
from django.core.cache import cache
from django.utils import timezone
from psycopg import sql

from apps.opie.agentos import events, prompts
from apps.opie.agentos.db import in_thread
from apps.opie.agentos.events import AgentEvent
from apps.opie.agentos.loopdb import loop_db
from apps.opie.agentos.lru import LRU
from apps.opie.models import Agent, ChatSession, RunRecord
from apps.opie.outages import outlasting_outage

if TYPE_CHECKING:
    from agno.agent import Agent as AgnoAgent
    from agno.models.response import ToolExecution
    from agno.run.agent import RunOutput
    from django.db.models import Field

    from apps.accounts.models import User

logger = logging.getLogger(__name__)

RUN_OWNER_KEY = "agentos_run_{}"
RUN_OWNER_TTL = 6 * 3600
KNOWLEDGE_TOOL = "search_knowledge"
# A stream ends once its run is recorded, but no later than this: in an outage the
# recording goes on retrying after the reader has its answer.
RECORD_WAIT_SECONDS = 5.0

# Turns whose reader left keep running; holding them here stops the loop from dropping them.
_running: set[asyncio.Task[None]] = set()
# Bookkeeping of completed runs happens off the turn's path; callers that need the row
# (the synchronous API, commands, tests) wait for it by run id.
_recordings: dict[str, asyncio.Task[None]] = {}


class Claim(NamedTuple):
    """A session row claimed in this process, and whose it is."""

    pk: int
    user_id: int
    agent_id: int


# Sessions claimed in this process, by session id. A session never changes owner, so a warm
# turn skips the ownership query and its record skips the session lookup.
claimed: LRU[str, Claim] = LRU(50_000)


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Run work in a task of its own that may outlive the request which started it.

    The task leaves the request's thread-sensitive context behind: that context's thread is
    handed to the next request when this one ends, and asgiref refuses calls made in it after.
    """
    context = contextvars.copy_context()
    context.run(SyncToAsync.thread_sensitive_context.set, None)  # type: ignore[arg-type]
    task = asyncio.create_task(coro, context=context)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def wait_recorded(run_id: str, timeout: float | None = None) -> None:
    """Wait (at most `timeout` seconds) until a finished run of this process is recorded."""
    task = _recordings.get(run_id)
    if task is not None:
        await asyncio.wait([task], timeout=timeout)


async def drain() -> None:
    """Wait for every turn still running in this process (tests and shutdown)."""
    while pending := [task for task in _running if not task.done()]:
        await asyncio.gather(*pending, return_exceptions=True)


async def stream_turn(
    agno_agent: AgnoAgent, *, agent_row: Agent, session_id: str, user: User, message: str
) -> AsyncIterator[AgentEvent]:
    """Run one turn and yield its events as they happen."""
    run_id = str(uuid.uuid4())
    cache.set(RUN_OWNER_KEY.format(run_id), user.pk, timeout=RUN_OWNER_TTL)
    queue: asyncio.Queue[AgentEvent | None] = asyncio.Queue()
    _spawn(_run_turn(agno_agent, agent_row, session_id, user, message, run_id, queue.put_nowait))
    while (event := await queue.get()) is not None:
        yield event


async def _run_turn(
    agno_agent: AgnoAgent,
    agent_row: Agent,
    session_id: str,
    user: User,
    message: str,
    run_id: str,
    emit: Callable[[AgentEvent | None], None],
) -> None:
    try:
        await _run_and_report(agno_agent, agent_row, session_id, user, message, run_id, emit)
        # The final event is out; the stream ends once the run's bookkeeping is stored, so a
        # reader that waits for the end never leaves database work behind.
        await wait_recorded(run_id, timeout=RECORD_WAIT_SECONDS)
    finally:
        emit(None)


async def _run_and_report(
    agno_agent: AgnoAgent,
    agent_row: Agent,
    session_id: str,
    user: User,
    message: str,
    run_id: str,
    emit: Callable[[AgentEvent | None], None],
) -> None:
    from agno.run.agent import (
        RunCancelledEvent,
        RunContentEvent,
        RunErrorEvent,
        RunOutput,
        ToolCallCompletedEvent,
        ToolCallErrorEvent,
        ToolCallStartedEvent,
    )
    from agno.run.base import RunStatus

    from apps.opie.agentos.providers import describe_provider_error

    ids = {"run_id": run_id, "session_id": session_id, "agent_id": agent_row.agent_id}
    provider = agent_row.model_config.provider if agent_row.model_config else "local"
    started = time.monotonic()
    emit(AgentEvent(events.RUN_STARTED, ids))
    content: list[str] = []
    references: list[dict[str, Any]] = []
    error: str | None = None
    cancelled = False
    final: RunOutput | None = None
    try:
        stream = agno_agent.arun(
            message,
            stream=True,
            stream_events=True,
            user_id=str(user.pk),
            session_id=session_id,
            run_id=run_id,
            yield_run_output=True,
        )
        async for item in stream:
            if isinstance(item, RunOutput):
                final = item
            elif isinstance(item, RunContentEvent):
                if isinstance(item.content, str) and item.content:
                    content.append(item.content)
                    emit(AgentEvent(events.DELTA, {"run_id": run_id, "delta": item.content}))
            elif isinstance(item, ToolCallStartedEvent) and item.tool is not None:
                emit(AgentEvent(events.TOOL_CALL, {"run_id": run_id, **tool_call(item.tool)}))
            elif isinstance(item, ToolCallCompletedEvent | ToolCallErrorEvent) and item.tool:
                result = tool_result(item.tool)
                references.extend(result.pop("references", []))
                emit(AgentEvent(events.TOOL_RESULT, {"run_id": run_id, **result}))
            elif isinstance(item, RunErrorEvent):
                error = describe_provider_error(RuntimeError(item.content or "error"), provider)
            elif isinstance(item, RunCancelledEvent):
                cancelled = True
    except Exception as exc:
        logger.warning("Run %s of agent %s failed: %s", run_id, agent_row.agent_id, exc)
        error = describe_provider_error(exc, provider)
    if final is not None and error is None:
        if final.status == RunStatus.error:
            error = describe_provider_error(RuntimeError(str(final.content or "")), provider)
        elif final.status == RunStatus.cancelled:
            cancelled = True
    answer = (
        "".join(content) if final is None or not isinstance(final.content, str) else final.content
    )
    usage = usage_of(final)
    model = (final.model if final else "") or ""
    duration_ms = int((time.monotonic() - started) * 1000)
    outcome = {**ids, "content": answer, "usage": usage, "model": model, "duration_ms": duration_ms}
    if error is None and not cancelled:
        if references:
            emit(AgentEvent(events.REFERENCES, {"run_id": run_id, "references": references}))
        emit(AgentEvent(events.MESSAGE, {"run_id": run_id, "content": answer}))
        emit(AgentEvent(events.SUCCEEDED, {**outcome, "status": "succeeded"}))
    else:
        status = RunRecord.Status.CANCELLED if cancelled else RunRecord.Status.FAILED
        spawn_recording(
            run_id=run_id,
            user_id=user.pk,
            agent_pk=agent_row.pk,
            session_id=session_id,
            status=status,
            model=model,
            provider=provider,
            usage=usage,
            duration_ms=duration_ms,
            error=error or "",
        )
        if cancelled:
            emit(AgentEvent(events.CANCELLED, {**outcome, "status": "cancelled"}))
        else:
            emit(AgentEvent(events.FAILED, {**outcome, "status": "failed", "error": error}))


def usage_of(output: RunOutput | None) -> dict[str, int]:
    """Token usage of a run."""
    metrics = output.metrics if output is not None else None
    if metrics is None:
        return {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    total = metrics.total_tokens or (metrics.input_tokens + metrics.output_tokens)
    return {
        "input_tokens": metrics.input_tokens,
        "output_tokens": metrics.output_tokens,
        "total_tokens": total,
    }


def tool_call(tool: ToolExecution) -> dict[str, Any]:
    """A tool call as clients see it."""
    return {"id": tool.tool_call_id, "name": tool.tool_name, "arguments": tool.tool_args or {}}


def tool_result(tool: ToolExecution) -> dict[str, Any]:
    """A finished tool call as clients see it, with knowledge references pulled out."""
    result = {**tool_call(tool), "result": tool.result, "error": bool(tool.tool_call_error)}
    if tool.tool_name == KNOWLEDGE_TOOL and tool.result:
        result["references"] = parse_references(tool.result)
    return result


def parse_references(text: str) -> list[dict[str, Any]]:
    """The references inside a knowledge search result."""
    start = text.find(prompts.DOCUMENTS_OPEN)
    end = text.rfind(prompts.DOCUMENTS_CLOSE)
    if start < 0 or end < 0:
        return []
    try:
        found = json.loads(text[start + len(prompts.DOCUMENTS_OPEN) : end])
    except ValueError:
        return []
    return [ref for ref in found if isinstance(ref, dict)] if isinstance(found, list) else []


def make_run_recorder(agent_pk: int, provider: str) -> Callable[..., Coroutine[Any, Any, None]]:
    """An agno post-hook recording each completed run of an agent, whichever door ran it."""

    async def record_completed_run(run_output: RunOutput, user_id: str | None = None) -> None:
        run_id = run_output.run_id
        if not user_id or not str(user_id).isdigit() or not run_id:
            return
        spawn_recording(
            run_id=run_id,
            user_id=int(user_id),
            agent_pk=agent_pk,
            session_id=run_output.session_id,
            status=RunRecord.Status.SUCCEEDED,
            model=run_output.model or "",
            provider=provider,
            usage=usage_of(run_output),
            duration_ms=_duration_ms(run_output, run_output.created_at or int(time.time())),
            error="",
            title=_input_text(run_output),
        )

    return record_completed_run


def spawn_recording(**fields: Any) -> None:
    """Record a finished run in the background (`record_run(**fields)`); see wait_recorded."""
    run_id = fields["run_id"]
    task = _spawn(outlasting_outage(f"the record of run {run_id}", lambda: _record(fields)))
    _recordings[run_id] = task
    task.add_done_callback(lambda _: _recordings.pop(run_id, None))


async def _record(fields: dict[str, Any]) -> None:
    """`record_run`, sent by the event loop itself when it can (see loopdb)."""
    session_id = fields["session_id"]
    claim = claimed.get(session_id) if session_id else None
    if claim is not None and claim.user_id == fields["user_id"] and loop_db.available():
        record = _new_record(claim.pk, **fields)
        await loop_db.execute(_record_statement(), _record_params(record))
    else:
        await in_thread(functools.partial(record_run, **fields))


def _duration_ms(run_output: RunOutput, started: int) -> int:
    metrics = run_output.metrics
    if metrics is not None and metrics.duration:
        return int(metrics.duration * 1000)
    return max(0, int((time.time() - started) * 1000))


def _input_text(run_output: RunOutput) -> str:
    value = run_output.input.input_content if run_output.input is not None else ""
    return value if isinstance(value, str) else ""


RECORD_FIELDS = [
    "user",
    "agent",
    "session",
    "status",
    "model",
    "provider",
    "duration_ms",
    "error",
    "input_tokens",
    "output_tokens",
    "total_tokens",
]


@functools.cache
def _record_statement() -> sql.Composed:
    """`record_run` for a claimed session in one statement: touch it, upsert the record.

    A session deleted during its turn is not brought back: its record keeps no session.
    """
    columns = [column for column, _attname in _record_columns()]
    inserted = [*columns, "created_at"]
    values = [
        sql.SQL("(SELECT id FROM touched)") if column == "session_id" else sql.Placeholder(column)
        for column in inserted
    ]
    return sql.SQL(
        "WITH touched AS (UPDATE {sessions} SET updated_at = %(now)s WHERE id = %(session)s "
        "RETURNING id) INSERT INTO {records} ({columns}) VALUES ({values}) "
        "ON CONFLICT (run_id) DO UPDATE SET {updates}"
    ).format(
        sessions=sql.Identifier(ChatSession._meta.db_table),
        records=sql.Identifier(RunRecord._meta.db_table),
        columns=sql.SQL(", ").join([sql.Identifier(column) for column in inserted]),
        values=sql.SQL(", ").join(values),
        updates=sql.SQL(", ").join(
            [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(col)) for col in columns[1:]]
        ),
    )


def _record_columns() -> list[tuple[str, str]]:
    """(column, attribute) of the fields written: `run_id`, then those a retry updates."""
    fields = [RunRecord._meta.get_field(name) for name in ["run_id", *RECORD_FIELDS]]
    return [(str(field.column), field.attname) for field in cast("list[Field[Any, Any]]", fields)]


def _record_params(record: RunRecord) -> dict[str, Any]:
    """The statement's parameters: the record's values by column, and the session to touch."""
    now = timezone.now()
    params = {column: getattr(record, attname) for column, attname in _record_columns()}
    return {**params, "created_at": now, "now": now, "session": record.session_id}


def _new_record(
    session_pk: int | None,
    *,
    run_id: str,
    user_id: int,
    agent_pk: int,
    status: str,
    model: str,
    provider: str,
    usage: dict[str, int],
    duration_ms: int,
    error: str,
    **_: Any,
) -> RunRecord:
    """A run's record, unsaved (the session id and title of the fields are not its own)."""
    return RunRecord(
        run_id=run_id,
        user_id=user_id,
        agent_id=agent_pk,
        session_id=session_pk,
        status=status,
        model=model[:200],
        provider=provider[:100],
        duration_ms=duration_ms,
        error=error,
        **usage,
    )


def record_run(*, session_id: str | None, title: str = "", **fields: Any) -> None:
    """Store a run's usage and bring its session to the top of the user's list (sync ORM).

    `fields` are `_new_record`'s. Two statements for a session claimed in this process:
    touch the session, upsert the record (a retried recording updates the row it wrote
    before).
    """
    run_id, user_id = fields["run_id"], fields["user_id"]
    session_pk = _session_of_run(run_id, user_id, fields["agent_pk"], session_id, title)
    RunRecord.objects.bulk_create(
        [_new_record(session_pk, **fields)],
        update_conflicts=True,
        unique_fields=["run_id"],
        update_fields=RECORD_FIELDS,
    )


def _session_of_run(
    run_id: str, user_id: int, agent_pk: int, session_id: str | None, title: str
) -> int | None:
    """The pk of the user's session of a run, touched; created for AgentOS-server runs."""
    if not session_id:
        return None
    claim = claimed.get(session_id)
    if claim is not None and claim.user_id == user_id:
        if ChatSession.objects.filter(pk=claim.pk).update(updated_at=timezone.now()):
            return claim.pk
        claimed.pop(session_id)  # deleted by another process since
    found = ChatSession.objects.filter(session_id=session_id).values_list("pk", "user_id").first()
    if found is None:
        # Runs started on the AgentOS server have no session row yet: create it for its user.
        session, created = ChatSession.objects.get_or_create(
            session_id=session_id,
            defaults={
                "user_id": user_id,
                "agent_id": agent_pk,
                "title": " ".join(title.split())[:80],
            },
        )
        found = (session.pk, session.user_id)
        if created:
            return session.pk if session.user_id == user_id else None
    session_pk, owner = found
    if owner != user_id:
        logger.warning("Run %s names session %s of another user", run_id, session_id)
        return None
    ChatSession.objects.filter(pk=session_pk).update(updated_at=timezone.now())
    return int(session_pk)


async def cancel(run_id: str) -> bool:
    """Ask a run to stop, in whichever process it runs (through Redis when configured)."""
    from agno.agent import Agent as AgnoAgent

    from apps.opie.agentos.config import share_cancellations

    share_cancellations()
    return await AgnoAgent.acancel_run(run_id)


def _agno_session(session_id: str, user_pk: int) -> Any:
    from agno.db.base import SessionType

    from apps.opie.agentos.config import agent_os_config

    return agent_os_config.get_db().get_session(
        session_id=session_id, session_type=SessionType.AGENT, user_id=str(user_pk)
    )


def session_messages(session_id: str, user_pk: int) -> list[dict[str, Any]]:
    """A session's transcript from agno's store: user and assistant turns with their tools."""
    stored = _agno_session(session_id, user_pk)
    messages: list[dict[str, Any]] = []
    for run in (stored.runs or []) if stored is not None else []:
        created = run.created_at
        messages.append(
            {
                "role": "user",
                "content": _input_text(run),
                "run_id": run.run_id,
                "created_at": created,
            }
        )
        results = [tool_result(tool) for tool in run.tools or []]
        references = [ref for result in results for ref in result.pop("references", [])]
        messages.append(
            {
                "role": "assistant",
                "content": run.content if isinstance(run.content, str) else "",
                "run_id": run.run_id,
                "status": str(run.status.value if run.status else ""),
                "tool_calls": results,
                "references": references,
                "usage": usage_of(run),
                "created_at": created,
            }
        )
    return messages


def rename_agno_session(session_id: str, user_pk: int, title: str) -> None:
    """Keep the session name in agno's store in step with ours (AgentOS clients read it)."""
    from agno.db.base import SessionType

    from apps.opie.agentos.config import agent_os_config

    agent_os_config.get_db().rename_session(
        session_id=session_id,
        session_type=SessionType.AGENT,
        session_name=title,
        user_id=str(user_pk),
    )


def delete_agno_session(session_id: str, user_pk: int) -> None:
    """Delete a session's history from agno's store."""
    from apps.opie.agentos.config import agent_os_config

    agent_os_config.get_db().delete_session(session_id=session_id, user_id=str(user_pk))
