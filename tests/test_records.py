"""Run records sent by a serving event loop over its own connection (loopdb)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections

from apps.accounts.models import User
from apps.opie.agentos import runs
from apps.opie.agentos.loopdb import APPLICATION_NAME, loop_db
from apps.opie.models import ChatSession, RunRecord
from tests import factories

# The loop's connection sees only committed rows, as it does in production.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Production's setting: the ORM calls around a turn run on the process's own threads."""
    monkeypatch.setattr(settings, "AGENTOS_SYNC_THREADS", 1)


@pytest.fixture
def no_orm_records(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Records that went through the ORM instead of the loop's connection."""
    through_orm: list[dict[str, Any]] = []
    monkeypatch.setattr(runs, "record_run", lambda **fields: through_orm.append(fields))
    return through_orm


@pytest.fixture
def claimed_session(user: User) -> Iterator[ChatSession]:
    agent = factories.agent(user)
    session = factories.session(user, agent, session_id="s-loop")
    runs.claimed.put(session.session_id, runs.Claim(session.pk, user.pk, agent.pk))
    yield session
    runs.claimed.pop(session.session_id)


def fields_of(session: ChatSession, run_id: str = "run-loop", **changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "user_id": session.user_id,
        "agent_pk": session.agent_id,
        "session_id": session.session_id,
        "status": RunRecord.Status.SUCCEEDED,
        "model": "scripted",
        "provider": "local",
        "usage": {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12},
        "duration_ms": 1234,
        "error": "",
    }
    return {**fields, **changes}


async def record_on_a_serving_loop(*all_fields: dict[str, Any]) -> None:
    loop_db.serve()
    try:
        for fields in all_fields:
            runs.spawn_recording(**fields)
            await runs.wait_recorded(fields["run_id"], timeout=10)
    finally:
        await loop_db.close()


@pytest.mark.usefixtures("serving")
def test_a_serving_loop_records_a_run_and_touches_its_session_itself(
    claimed_session: ChatSession, no_orm_records: list[dict[str, Any]]
) -> None:
    before = claimed_session.updated_at

    asyncio.run(record_on_a_serving_loop(fields_of(claimed_session)))

    record = RunRecord.objects.get(run_id="run-loop")
    assert (record.user_id, record.agent_id, record.session_id) == (
        claimed_session.user_id,
        claimed_session.agent_id,
        claimed_session.pk,
    )
    assert (record.status, record.model, record.provider, record.duration_ms) == (
        "succeeded",
        "scripted",
        "local",
        1234,
    )
    assert (record.input_tokens, record.output_tokens, record.total_tokens) == (7, 5, 12)
    claimed_session.refresh_from_db()
    assert claimed_session.updated_at > before
    assert no_orm_records == []


@pytest.mark.usefixtures("serving")
def test_a_record_tried_again_updates_its_row(claimed_session: ChatSession) -> None:
    first = fields_of(claimed_session)
    again = fields_of(claimed_session, status=RunRecord.Status.FAILED, error="provider down")

    asyncio.run(record_on_a_serving_loop(first, again))

    [record] = RunRecord.objects.filter(run_id="run-loop")
    assert (record.status, record.error) == ("failed", "provider down")


@pytest.mark.usefixtures("serving")
def test_a_session_deleted_during_its_turn_is_not_brought_back(
    claimed_session: ChatSession,
) -> None:
    fields = fields_of(claimed_session)
    ChatSession.objects.filter(pk=claimed_session.pk).delete()

    asyncio.run(record_on_a_serving_loop(fields))

    assert RunRecord.objects.get(run_id="run-loop").session_id is None
    assert not ChatSession.objects.filter(session_id="s-loop").exists()


@pytest.mark.usefixtures("serving")
def test_the_loop_reconnects_after_its_connection_was_dropped(
    claimed_session: ChatSession,
) -> None:
    def end_the_loops_connection() -> None:
        """As a database restart would."""
        with connections["default"].cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [APPLICATION_NAME],
            )
            assert cursor.fetchone() == (True,)
        connections["default"].close()

    async def record_kill_record() -> None:
        loop_db.serve()
        try:
            runs.spawn_recording(**fields_of(claimed_session, run_id="run-1"))
            await runs.wait_recorded("run-1", timeout=10)
            await asyncio.to_thread(end_the_loops_connection)
            runs.spawn_recording(**fields_of(claimed_session, run_id="run-2"))
            await runs.wait_recorded("run-2", timeout=10)
        finally:
            await loop_db.close()

    asyncio.run(record_kill_record())

    assert set(RunRecord.objects.values_list("run_id", flat=True)) == {"run-1", "run-2"}


def test_only_a_serving_loop_with_sync_threads_writes_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def available() -> list[bool]:
        found = [loop_db.available()]
        loop_db.serve()
        found.append(loop_db.available())
        monkeypatch.setattr(settings, "AGENTOS_SYNC_THREADS", 0)
        found.append(loop_db.available())
        return found

    monkeypatch.setattr(settings, "AGENTOS_SYNC_THREADS", 1)

    assert asyncio.run(available()) == [False, True, False]


@pytest.mark.usefixtures("serving")
def test_a_loop_not_serving_records_through_the_orm(
    claimed_session: ChatSession, no_orm_records: list[dict[str, Any]]
) -> None:
    async def record() -> None:
        runs.spawn_recording(**fields_of(claimed_session))
        await runs.wait_recorded("run-loop", timeout=10)

    asyncio.run(record())

    assert [fields["run_id"] for fields in no_orm_records] == ["run-loop"]
    assert not RunRecord.objects.filter(run_id="run-loop").exists()
