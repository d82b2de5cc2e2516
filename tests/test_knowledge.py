"""Knowledge search: relevance, citations, isolation between users, indexes, re-embedding."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from apps.accounts.models import User
from apps.opie.agentos.embedders import MiniLMEmbedder
from apps.opie.agentos.knowledge import (
    asearch,
    build_knowledge,
    drop_orphan_tables,
    ensure_tables,
    ingest_document,
    search,
)
from apps.opie.agentos.knowledge.store import q, table_name
from apps.opie.models import KnowledgeBase, KnowledgeDocument
from tests import factories

REFUND = (
    "Refund policy: customers may return any product within 30 days of delivery and get "
    "their money back in full, paid to the original card."
)
WIFI = "Office wifi: the guest network is called Orchard; its password is on the fridge."
SECRET = "Mallory's launch plan: Project Nightjar ships to customers on the ninth of May."


def indexed(kb: KnowledgeBase, text: str, title: str = "doc") -> KnowledgeDocument:
    """A text document of `kb`, indexed."""
    document = factories.document(kb, title=title, text=text)
    assert ingest_document(document.pk) == "ready"
    document.refresh_from_db()
    return document


def rows(kb: KnowledgeBase, statement: Any = "SELECT document_id, chunk_index FROM {t}") -> list:
    with connection.cursor() as cursor:
        cursor.execute(q(statement, t=table_name(kb.pk)))
        return list(cursor.fetchall())


@pytest.fixture
def kb(user: User) -> KnowledgeBase:
    return factories.knowledge_base(user)


@pytest.fixture
def theirs(other_user: User) -> KnowledgeBase:
    base = factories.knowledge_base(other_user)
    indexed(base, SECRET, title="Nightjar plan")
    return base


def test_it_finds_the_relevant_chunk_and_cites_it(kb: KnowledgeBase) -> None:
    refund = indexed(kb, REFUND, title="Refunds")
    indexed(kb, WIFI, title="Wifi")

    best = search([kb.pk], "How do I get my money back?")[0]

    assert (best.document_id, best.title, best.knowledge_base_id) == (refund.pk, "Refunds", kb.pk)
    assert best.chunk == REFUND
    assert best.chunk_index == 0
    assert 0 < best.score <= 1
    assert best.as_dict() == {
        "document_id": refund.pk,
        "title": "Refunds",
        "knowledge_base_id": kb.pk,
        "chunk": REFUND,
        "score": best.score,
        "chunk_index": 0,
        "url": "",
    }


def test_it_ranks_results_by_score(kb: KnowledgeBase) -> None:
    indexed(kb, REFUND)
    indexed(kb, WIFI)

    references = search([kb.pk], "wifi password", limit=5)

    assert len(references) == 2
    assert references[0].chunk == WIFI
    assert references[0].score > references[1].score


def test_it_finds_exact_terms_through_full_text(kb: KnowledgeBase) -> None:
    for n in range(12):
        indexed(kb, f"Invoice {n} was paid by bank transfer on a Tuesday morning.")
    code = indexed(kb, "Error QX7731 means the invoice printer is out of toner.")

    assert search([kb.pk], "QX7731", search_type="keyword")[0].document_id == code.pk
    assert search([kb.pk], "QX7731")[0].document_id == code.pk


def test_it_merges_several_bases_by_score(user: User, kb: KnowledgeBase) -> None:
    second = factories.knowledge_base(user)
    indexed(kb, REFUND)
    wifi = indexed(second, WIFI)

    references = search([kb.pk, second.pk], "guest network password")

    assert {r.knowledge_base_id for r in references} == {kb.pk, second.pk}
    assert references[0].document_id == wifi.pk
    assert [r.score for r in references] == sorted((r.score for r in references), reverse=True)


def test_it_never_returns_another_users_documents(kb: KnowledgeBase, theirs: KnowledgeBase) -> None:
    indexed(kb, REFUND)

    for query in (SECRET, "Project Nightjar", f"x' OR 1=1 -- {theirs.pk}", '{"user_id": null}'):
        assert {r.knowledge_base_id for r in search([kb.pk], query, limit=50)} == {kb.pk}
    assert search([], SECRET) == []


def test_it_finds_a_base_indexed_since_its_last_search(kb: KnowledgeBase) -> None:
    assert search([kb.pk], "money back") == []

    refund = indexed(kb, REFUND)

    assert search([kb.pk], "money back")[0].document_id == refund.pk


def test_it_answers_after_a_base_was_deleted_since_its_last_search(
    user: User, kb: KnowledgeBase
) -> None:
    gone = factories.knowledge_base(user)
    refund = indexed(kb, REFUND)
    indexed(gone, WIFI)
    assert {r.knowledge_base_id for r in search([kb.pk, gone.pk], "wifi money")} == {
        kb.pk,
        gone.pk,
    }
    gone_id = gone.pk
    gone.delete()
    drop_orphan_tables()

    references = search([kb.pk, gone_id], "money back")

    assert [r.document_id for r in references] == [refund.pk]


@pytest.mark.django_db(transaction=True)
def test_it_ignores_filters_a_client_passes_to_an_agent_run(
    monkeypatch: pytest.MonkeyPatch, user: User, kb: KnowledgeBase, theirs: KnowledgeBase
) -> None:
    from agno.run.agent import RunOutput

    from apps.opie.agentos import runs
    from apps.opie.agentos.config import agent_os_config

    monkeypatch.setenv("AGENTOS_MODEL_OVERRIDE", "tests.fakes:make_model")
    indexed(kb, REFUND, title="Refunds")
    agent = agent_os_config.create_agent_from_django(
        factories.agent(user, knowledge_bases=[kb]), user
    )

    async def attack() -> RunOutput:
        run = await agent.arun(
            "search: Project Nightjar launch plan",
            knowledge_filters={"knowledge_base_id": theirs.pk, "user_id": None},
            user_id=str(theirs.owner_id),
        )
        # The run's usage is recorded in the background; let it finish before teardown.
        await runs.drain()
        return run

    run = asyncio.run(attack())

    results = [tool.result or "" for tool in run.tools or []]
    assert len(results) == 1
    references = json.loads(next(line for line in results[0].splitlines() if line[:1] == "["))
    assert {(r["knowledge_base_id"], r["title"]) for r in references} == {(kb.pk, "Refunds")}
    assert "Nightjar" not in results[0]


@pytest.mark.django_db(transaction=True)
def test_it_searches_from_async_code(kb: KnowledgeBase, theirs: KnowledgeBase) -> None:
    refund = indexed(kb, REFUND)

    references = asyncio.run(asearch([kb.pk], "money back"))

    assert [r.document_id for r in references] == [refund.pk]
    assert json.loads(json.dumps([r.as_dict() for r in references]))[0]["chunk"] == REFUND


def test_it_creates_hnsw_and_full_text_indexes(kb: KnowledgeBase) -> None:
    ensure_tables(kb)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'knowledge' "
            "AND tablename = %s",
            [table_name(kb.pk)],
        )
        definitions = dict(cursor.fetchall())
    name = table_name(kb.pk)
    assert "USING hnsw (embedding vector_cosine_ops)" in definitions[f"{name}_embedding_idx"]
    assert "USING gin (fts)" in definitions[f"{name}_fts_idx"]


def test_it_uses_the_hnsw_index_for_nearest_neighbours(kb: KnowledgeBase) -> None:
    indexed(kb, REFUND)
    name = table_name(kb.pk)
    vector = "[" + ",".join(["0.05"] * 384) + "]"

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            q("EXPLAIN SELECT id FROM {t} ORDER BY embedding <=> %s::vector LIMIT 5", t=name),
            [vector],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Index Scan using {name}_embedding_idx" in plan


@pytest.mark.django_db(transaction=True)
def test_it_exposes_a_base_as_agno_knowledge(kb: KnowledgeBase) -> None:
    indexed(kb, REFUND, title="Refunds")

    documents = build_knowledge(kb).search("money back", user_id=str(kb.owner_id))

    assert [d.content for d in documents] == [REFUND]
    assert documents[0].meta_data["document_id"] > 0


def test_it_reembeds_a_base_into_a_fresh_table(kb: KnowledgeBase) -> None:
    refund = indexed(kb, REFUND)
    wifi = indexed(kb, WIFI)
    before = sorted(rows(kb))
    rows(kb, "UPDATE {t} SET embedding = array_fill(0.05, ARRAY[384])::vector RETURNING 1")
    output = io.StringIO()

    call_command("agentos_reembed", kb=kb.pk, force=True, stdout=output)

    assert "2 chunks of 2 documents" in output.getvalue()
    assert sorted(rows(kb)) == before
    stored = rows(kb, "SELECT content, embedding::text FROM {t} ORDER BY document_id")
    fresh = MiniLMEmbedder().embed_array([REFUND, WIFI])
    for (_, text), expected in zip(stored, fresh, strict=True):
        assert float(np.dot(np.array(json.loads(text)), expected)) > 0.9999
    assert search([kb.pk], "money back")[0].document_id == refund.pk
    assert search([kb.pk], "wifi password")[0].document_id == wifi.pk
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [f"knowledge.{table_name(kb.pk, '_next')}"])
        assert cursor.fetchone()[0] is None


def test_it_reports_a_dimension_mismatch_clearly(kb: KnowledgeBase) -> None:
    refund = indexed(kb, REFUND)
    KnowledgeBase.objects.filter(pk=kb.pk).update(dimensions=512)
    output = io.StringIO()

    with pytest.raises(CommandError, match="produces 384 dimensions, not 512"):
        call_command("agentos_reembed", kb=kb.pk, stdout=output)

    assert f"stored vectors have 384 dimensions, '{kb.name}' is now set to 512" in output.getvalue()
    assert search([kb.pk], "money back")[0].document_id == refund.pk


def test_it_reembeds_waiting_documents_after_the_embedder_changed(kb: KnowledgeBase) -> None:
    indexed(kb, REFUND)
    KnowledgeBase.objects.filter(pk=kb.pk).update(indexed_embedder="local:384:old-minilm")
    waiting = factories.document(kb, text=WIFI)
    assert ingest_document(waiting.pk) == "queued"
    kb.refresh_from_db()

    call_command("agentos_reembed", kb=kb.pk, stdout=io.StringIO())
    assert ingest_document(waiting.pk) == "ready"

    kb.refresh_from_db()
    assert kb.indexed_embedder == "local:384:"
    assert search([kb.pk], "wifi password")[0].document_id == waiting.pk


def test_it_drops_tables_of_deleted_bases(kb: KnowledgeBase) -> None:
    indexed(kb, REFUND)
    name = table_name(kb.pk)
    kb.delete()

    assert name in drop_orphan_tables()
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [f"knowledge.{name}"])
        assert cursor.fetchone()[0] is None
