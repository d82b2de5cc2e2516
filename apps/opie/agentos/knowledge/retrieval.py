"""Hybrid search over the vector tables of the given knowledge bases, with citations.

Each base contributes index-backed candidates (HNSW nearest neighbours plus GIN full-text
matches); candidates are scored as agno's PgVector hybrid search scores rows
(w * cosine similarity + (1 - w) * rank / (rank + 0.1)) and merged across bases by score.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Final, Literal

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection, transaction
from psycopg import sql

from apps.opie.agentos.knowledge.store import (
    SCHEMA,
    embed_texts,
    embedder_for,
    parse_signature,
    q,
    table_name,
    vector_literal,
)
from apps.opie.models import KnowledgeBase, KnowledgeDocument

SearchType = Literal["hybrid", "vector", "keyword"]
MAX_LIMIT = 50
# Share of the vector similarity in a hybrid score, as agno's PgVector defaults to.
VECTOR_WEIGHT = {"hybrid": 0.5, "vector": 1.0, "keyword": 0.0}
_QUERY: Final = (
    "WITH query AS MATERIALIZED (SELECT "
    "replace(plainto_tsquery('english', %(text)s)::text, ' & ', ' | ')::tsquery AS tsq) "
)
# Each arm is a LIMITed subquery, so Postgres runs it first through its index and only the
# candidates meet the documents join, whatever the table statistics say.
_NEAREST: Final = "(SELECT {columns} FROM {t} ORDER BY distance LIMIT %(n)s)"
_MATCHING: Final = (
    "(SELECT {columns} FROM {t}, query WHERE fts @@ query.tsq "
    "ORDER BY ts_rank_cd(fts, query.tsq) DESC LIMIT %(n)s)"
)
_SCORED: Final = {
    "vector": "SELECT {kb}::bigint AS knowledge_base_id, document_id, chunk_index, content, "
    "1 - distance AS similarity, 0.0 AS rank FROM {arms} p",
    "hybrid": "SELECT DISTINCT ON (id) {kb}::bigint AS knowledge_base_id, document_id, "
    "chunk_index, content, 1 - distance AS similarity, ts_rank_cd(fts, query.tsq) AS rank "
    "FROM ({arms}) p, query",
    "keyword": "SELECT {kb}::bigint AS knowledge_base_id, document_id, chunk_index, content, "
    "0.0 AS similarity, ts_rank_cd(fts, query.tsq) AS rank FROM {arms} p, query",
}


@dataclass(frozen=True)
class Reference:
    """One retrieved chunk and where it comes from: what an answer cites."""

    document_id: int
    title: str
    knowledge_base_id: int
    chunk: str
    score: float
    chunk_index: int
    url: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Base:
    id: int
    signature: str


def search(
    knowledge_base_ids: list[int],
    query: str,
    limit: int = 5,
    search_type: SearchType | None = None,
) -> list[Reference]:
    """The best chunks for `query` in exactly these knowledge bases, best first."""
    mode = search_type or settings.AGENTOS_KNOWLEDGE_SEARCH_TYPE
    bases = _indexed_bases(knowledge_base_ids)
    if not bases:
        return []
    return _run(bases, _query_vectors(bases, query, mode), query, limit, mode)


async def asearch(
    knowledge_base_ids: list[int],
    query: str,
    limit: int = 5,
    search_type: SearchType | None = None,
) -> list[Reference]:
    """`search` for async callers: SQL on Django's connection, the embedding in a thread."""
    mode = search_type or settings.AGENTOS_KNOWLEDGE_SEARCH_TYPE
    bases = await sync_to_async(_indexed_bases)(knowledge_base_ids)
    if not bases:
        return []
    vectors = await asyncio.to_thread(_query_vectors, bases, query, mode)
    return await sync_to_async(_run)(bases, vectors, query, limit, mode)


def _indexed_bases(knowledge_base_ids: list[int]) -> list[_Base]:
    # Bases never indexed (or whose table is gone) have nothing to find.
    ids = sorted({int(pk) for pk in knowledge_base_ids})
    if not ids:
        return []
    statement = q(
        "SELECT id, indexed_embedder FROM {bases} WHERE id = ANY(%s) AND indexed_embedder <> '' "
        "AND to_regclass(%s || '.kb_' || id) IS NOT NULL ORDER BY id",
        bases=sql.Identifier(KnowledgeBase._meta.db_table),
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, [ids, SCHEMA])
        return [_Base(int(row[0]), str(row[1])) for row in cursor.fetchall()]


def _query_vectors(bases: list[_Base], query: str, mode: str) -> dict[str, str]:
    # The query is embedded with what each base's vectors were made with, so a base whose
    # embedder was edited keeps answering until it is re-embedded.
    if mode == "keyword":
        return {}
    vectors = {}
    for value in {base.signature for base in bases}:
        dimensions = parse_signature(value)[1]
        vectors[value] = vector_literal(embed_texts(embedder_for(value), [query], dimensions)[0])
    return vectors


def _run(
    bases: list[_Base], vectors: dict[str, str], query: str, limit: int, mode: str
) -> list[Reference]:
    limit = max(1, min(int(limit), MAX_LIMIT))
    # Hybrid re-scores a wider pool from each index; pure vector order needs no more than asked.
    candidates = limit if mode == "vector" else max(4 * limit, 40)
    params: dict[str, Any] = {"text": query, "n": candidates, "limit": limit}
    for position, base in enumerate(bases):
        params[f"kb{position}"] = base.id
        params[f"v{position}"] = vectors.get(base.signature)
    ef_search = max(int(settings.AGENTOS_HNSW_EF_SEARCH), candidates)
    setting, statement = _statements(tuple(base.id for base in bases), mode, ef_search)
    with connection.cursor() as cursor:
        if connection.settings_dict["OPTIONS"].get("server_side_binding"):
            with transaction.atomic():
                cursor.execute(setting)
                cursor.execute(statement, params)
                rows = cursor.fetchall()
        else:
            # Django's client-side binding sends one simple query: both statements share its
            # implicit transaction, so the setting costs no round trip and ends with it.
            cursor.execute(f"{setting}; {statement}", params)
            cursor.nextset()
            rows = cursor.fetchall()
    return [
        Reference(
            document_id=int(row[1]),
            title=str(row[4]),
            knowledge_base_id=int(row[0]),
            chunk=str(row[3]),
            score=round(float(row[6]), 6),
            chunk_index=int(row[2]),
            url=str(row[5] or ""),
        )
        for row in rows
    ]


@functools.lru_cache(maxsize=256)
def _statements(base_ids: tuple[int, ...], mode: str, ef_search: int) -> tuple[str, str]:
    # The SQL text depends only on which tables and mode, so it is composed once per process.
    statement = sql.SQL(
        "{query}SELECT r.knowledge_base_id, r.document_id, r.chunk_index, r.content, d.title, "
        "d.url, {w} * greatest(r.similarity, 0) + (1 - {w}) * r.rank / (r.rank + 0.1) AS score "
        "FROM ({blocks}) r JOIN {documents} d "
        "ON d.id = r.document_id AND d.knowledge_base_id = r.knowledge_base_id "
        "ORDER BY score DESC, r.document_id, r.chunk_index LIMIT %(limit)s"
    ).format(
        query=sql.SQL("" if mode == "vector" else _QUERY),
        w=sql.Literal(VECTOR_WEIGHT[mode]),
        blocks=sql.SQL(" UNION ALL ").join(
            _scored(position, base_id, mode) for position, base_id in enumerate(base_ids)
        ),
        documents=sql.Identifier(KnowledgeDocument._meta.db_table),
    )
    setting = q("SET LOCAL hnsw.ef_search = {n}", n=sql.Literal(ef_search))
    return setting, statement.as_string()


def _scored(position: int, base_id: int, mode: str) -> sql.Composable:
    table = sql.Identifier(SCHEMA, table_name(base_id))
    distance = (
        sql.SQL("NULL::float8")
        if mode == "keyword"
        else sql.SQL("embedding <=> {v}::vector").format(v=sql.Placeholder(f"v{position}"))
    )
    columns = sql.SQL("id, document_id, chunk_index, content, fts, {d} AS distance").format(
        d=distance
    )
    arms = []
    if mode != "keyword":
        arms.append(sql.SQL(_NEAREST).format(columns=columns, t=table))
    if mode != "vector":
        arms.append(sql.SQL(_MATCHING).format(columns=columns, t=table))
    return sql.SQL(_SCORED[mode]).format(
        kb=sql.Placeholder(f"kb{position}"), arms=sql.SQL(" UNION ALL ").join(arms)
    )
