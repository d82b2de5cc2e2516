"""The vector tables: one PgVector-compatible table per knowledge base, its indexes and writes.

Tables live in the `knowledge` schema as `kb_<id>` with agno's PgVector (schema v1) columns,
plus `document_id`, `chunk_index` and a stored `fts` tsvector. All SQL runs on Django's
connection, so a document's chunks and its status change commit in one transaction.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, LiteralString

from django.db import connection, transaction
from psycopg import sql
from psycopg.types.json import Jsonb

from apps.opie.models import KnowledgeBase, KnowledgeDocument

if TYPE_CHECKING:
    from agno.knowledge.embedder.base import Embedder
    from agno.knowledge.knowledge import Knowledge

SCHEMA = "knowledge"
# pgvector's HNSW indexes `vector` columns of at most 2,000 dimensions; wider ones scan.
HNSW_MAX_DIMENSIONS = 2000
_DOCUMENT_LOCKS = 1
_BASE_LOCKS = 2


class KnowledgeMismatch(Exception):
    """An embedder and a knowledge base disagree (e.g. on dimensions); the message says how."""


class VectorsStale(KnowledgeMismatch):
    """The stored vectors come from another embedder than the configured one."""


def table_name(knowledge_base_id: int, suffix: str = "") -> str:
    """The vector table of a knowledge base (inside SCHEMA)."""
    return f"kb_{int(knowledge_base_id)}{suffix}"


def q(template: LiteralString, **names: str | sql.Composable) -> str:
    """SQL with `{name}` placeholders filled; plain strings become SCHEMA-qualified tables."""
    parts = {
        key: value if isinstance(value, sql.Composable) else sql.Identifier(SCHEMA, value)
        for key, value in names.items()
    }
    return sql.SQL(template).format(**parts).as_string()


def signature(kb: KnowledgeBase) -> str:
    """`kind:dimensions:model` of the embedder a base is configured with."""
    return f"{kb.embedder}:{kb.dimensions}:{kb.embedder_model}"


def parse_signature(value: str) -> tuple[str, int, str]:
    """(kind, dimensions, model) from a signature; models may contain colons."""
    kind, dimensions, model = value.split(":", 2)
    return kind, int(dimensions), model


@functools.lru_cache(maxsize=32)
def embedder_for(value: str) -> Embedder:
    """The agno embedder for a signature, built once per process."""
    from apps.opie.agentos.embedders import build_embedder

    kind, dimensions, model = parse_signature(value)
    return build_embedder(kind, model=model or None, dimensions=dimensions)


def embed_texts(embedder: Embedder, texts: list[str], dimensions: int) -> list[list[float]]:
    """One vector per text, checked to have the base's dimensions."""
    batch = getattr(embedder, "get_embeddings_batch_and_usage", None)
    abatch = getattr(embedder, "async_get_embeddings_batch_and_usage", None)
    if batch is not None:
        vectors: list[list[float]] = batch(texts)[0]
    elif abatch is not None and embedder.enable_batch:
        vectors = asyncio.run(abatch(texts))[0]
    else:
        vectors = [embedder.get_embedding(text) for text in texts]
    if len(vectors) != len(texts) or any(not vector for vector in vectors):
        raise KnowledgeMismatch(
            "The embedder returned no vector for some of the text; check that its service "
            "is running and configured."
        )
    for vector in vectors:
        if len(vector) != dimensions:
            raise KnowledgeMismatch(
                f"The embedder returns {len(vector)}-dimensional vectors but the knowledge "
                f"base is set to {dimensions} dimensions. Set its dimensions to {len(vector)}, "
                "then run `manage.py agentos_reembed --kb <id>`."
            )
    return vectors


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector."""
    # Nine significant digits round-trip float32 (pgvector's storage) at a third of repr's cost.
    return "[" + ",".join(map("{:.9g}".format, vector)) + "]"


def _lock_key(namespace: int, object_id: int) -> int:
    return (namespace << 48) | int(object_id)


def document_lock_key(document_id: int) -> int:
    """The advisory lock key a worker holds while it indexes this document."""
    return _lock_key(_DOCUMENT_LOCKS, document_id)


@contextmanager
def document_lock(document_id: int) -> Iterator[bool]:
    """Hold a session lock on a document; yields False when another worker holds it.

    Postgres drops the lock with the connection, so a killed worker frees its document.
    """
    key = document_lock_key(document_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])


def document_in_progress(document_id: int) -> bool:
    """Whether a live worker is ingesting this document right now."""
    with document_lock(document_id) as acquired:
        return not acquired


def lock_base(knowledge_base_id: int, *, shared: bool = False) -> None:
    """Lock a base's table until the transaction ends (shared for writes, else exclusive)."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {function}(%s)", [_lock_key(_BASE_LOCKS, knowledge_base_id)])


def table_exists(name: str) -> bool:
    """Whether SCHEMA.name exists."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [f'{SCHEMA}."{name}"'])
        return cursor.fetchone()[0] is not None


def _has_rows(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(q("SELECT EXISTS (SELECT 1 FROM {t})", t=name))
        return bool(cursor.fetchone()[0])


def create_table(name: str, dimensions: int) -> None:
    """Create an empty vector table (no vector index: see `create_indexes`)."""
    with connection.cursor() as cursor:
        cursor.execute(q("CREATE SCHEMA IF NOT EXISTS {s}", s=sql.Identifier(SCHEMA)))
        cursor.execute(
            q(
                """
                CREATE TABLE {t} (
                    id varchar CONSTRAINT {pkey} PRIMARY KEY,
                    name varchar,
                    meta_data jsonb DEFAULT '{{}}'::jsonb,
                    filters jsonb DEFAULT '{{}}'::jsonb,
                    content text NOT NULL,
                    embedding vector({dimensions}) NOT NULL,
                    usage jsonb,
                    created_at timestamptz DEFAULT now(),
                    updated_at timestamptz,
                    content_hash varchar,
                    content_id varchar,
                    user_id varchar,
                    document_id bigint NOT NULL,
                    chunk_index integer NOT NULL,
                    fts tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
                    CONSTRAINT {chunk_key} UNIQUE (document_id, chunk_index)
                )
                """,
                t=name,
                pkey=sql.Identifier(f"{name}_pkey"),
                chunk_key=sql.Identifier(f"{name}_chunk_key"),
                dimensions=sql.Literal(int(dimensions)),
            )
        )


def create_indexes(name: str, dimensions: int) -> None:
    """The HNSW (cosine) and GIN full-text indexes agno's `optimize()` cannot create here."""
    with connection.cursor() as cursor:
        # Even with IF NOT EXISTS, CREATE INDEX locks out writers first: look before asking.
        indexes = ["fts_idx"] + (["embedding_idx"] if dimensions <= HNSW_MAX_DIMENSIONS else [])
        cursor.execute(
            "SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest(%s::text[]) n",
            [[f'{SCHEMA}."{name}_{index}"' for index in indexes]],
        )
        if cursor.fetchone()[0]:
            return
        if dimensions <= HNSW_MAX_DIMENSIONS:
            cursor.execute(
                q(
                    "CREATE INDEX IF NOT EXISTS {i} ON {t} "
                    "USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)",
                    i=sql.Identifier(f"{name}_embedding_idx"),
                    t=name,
                )
            )
        cursor.execute(
            q(
                "CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (fts)",
                i=sql.Identifier(f"{name}_fts_idx"),
                t=name,
            )
        )


def drop_table(name: str) -> None:
    """Drop a vector table if it exists."""
    with connection.cursor() as cursor:
        cursor.execute(q("DROP TABLE IF EXISTS {t}", t=name))


def rename_table(name: str, new_name: str) -> None:
    """Rename a vector table together with its constraints and indexes."""
    with connection.cursor() as cursor:
        cursor.execute(q("ALTER TABLE {t} RENAME TO {n}", t=name, n=sql.Identifier(new_name)))
        for suffix in ("_pkey", "_chunk_key"):
            cursor.execute(
                q(
                    "ALTER TABLE {t} RENAME CONSTRAINT {c} TO {n}",
                    t=new_name,
                    c=sql.Identifier(name + suffix),
                    n=sql.Identifier(new_name + suffix),
                )
            )
        for suffix in ("_embedding_idx", "_fts_idx"):
            cursor.execute(
                q(
                    "ALTER INDEX IF EXISTS {i} RENAME TO {n}",
                    i=name + suffix,
                    n=sql.Identifier(new_name + suffix),
                )
            )


def ensure_tables(kb: KnowledgeBase) -> None:
    """Create the base's table and indexes when missing; raise KnowledgeMismatch when stale.

    Stale means the stored vectors came from another embedder than the configured one:
    `agentos_reembed` rebuilds them. An empty stale table is simply recreated.
    """
    wanted = signature(kb)
    name = table_name(kb.pk)
    with transaction.atomic():
        lock_base(kb.pk)
        indexed = KnowledgeBase.objects.filter(pk=kb.pk).values_list("indexed_embedder", flat=True)
        current = indexed.first()
        if current is None:
            raise KnowledgeBase.DoesNotExist(f"Knowledge base {kb.pk} no longer exists.")
        exists = table_exists(name)
        if exists and current == wanted:
            create_indexes(name, kb.dimensions)
            kb.indexed_embedder = current
            return
        if exists and current and _has_rows(name):
            raise VectorsStale(stale_message(kb, current))
        drop_table(name)
        create_table(name, kb.dimensions)
        create_indexes(name, kb.dimensions)
        KnowledgeBase.objects.filter(pk=kb.pk).update(indexed_embedder=wanted)
        kb.indexed_embedder = wanted


def stale_message(kb: KnowledgeBase, indexed: str) -> str:
    """What to tell a person when a base's vectors were made with another embedder."""
    kind, dimensions, model = parse_signature(indexed)
    stored = f"{kind}{' ' + model if model else ''}, {dimensions} dimensions"
    wanted = f"{kb.embedder}{' ' + kb.embedder_model if kb.embedder_model else ''}"
    return (
        f"Knowledge base '{kb.name}' holds vectors made with {stored}, but is now set to "
        f"{wanted}, {kb.dimensions} dimensions. Run `manage.py agentos_reembed --kb {kb.pk}` "
        "to rebuild them; new documents wait until then."
    )


def copy_chunks(
    name: str,
    document: KnowledgeDocument,
    owner_id: int,
    chunks: Sequence[str],
    vectors: Sequence[Sequence[float]],
    first_index: int = 0,
) -> None:
    """Bulk-insert chunks of one document with COPY."""
    statement = q(
        "COPY {t} (id, name, meta_data, content, embedding, content_hash, content_id, user_id, "
        "document_id, chunk_index) FROM STDIN",
        t=name,
    )
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        for offset, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
            index = first_index + offset
            meta = {
                "document_id": document.pk,
                "knowledge_base_id": document.knowledge_base_id,
                "chunk_index": index,
                "title": document.title,
            }
            copy.write_row(
                (
                    f"{document.pk}:{index}",
                    document.title,
                    Jsonb(meta),
                    chunk.replace("\x00", "\ufffd"),
                    vector_literal(vector),
                    document.content_hash,
                    str(document.pk),
                    str(owner_id),
                    document.pk,
                    index,
                )
            )


def delete_document_chunks(knowledge_base_id: int, document_id: int) -> None:
    """Remove a document's vectors (inside the caller's transaction, if any)."""
    name = table_name(knowledge_base_id)
    if table_exists(name):
        with connection.cursor() as cursor:
            cursor.execute(q("DELETE FROM {t} WHERE document_id = %s", t=name), [document_id])


def chunk_rows(name: str, document_id: int) -> list[tuple[int, str]]:
    """(chunk_index, content) of a document's stored chunks, in order."""
    with connection.cursor() as cursor:
        cursor.execute(
            q("SELECT chunk_index, content FROM {t} WHERE document_id = %s ORDER BY 1", t=name),
            [document_id],
        )
        return [(int(row[0]), str(row[1])) for row in cursor.fetchall()]


def drop_orphan_tables() -> list[str]:
    """Drop vector tables whose knowledge base was deleted; returns their names."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename ~ '^kb_[0-9]+$'",
            [SCHEMA],
        )
        names = [str(row[0]) for row in cursor.fetchall()]
    alive = set(KnowledgeBase.objects.values_list("pk", flat=True))
    dropped = [name for name in names if int(name.removeprefix("kb_")) not in alive]
    for name in dropped:
        drop_table(name)
    return dropped


def run(statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Execute one statement on Django's connection and return its rows."""
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description else []


def build_knowledge(kb: KnowledgeBase) -> Knowledge:
    """agno's Knowledge over a base's table, for agno-side tooling; Opie searches with `search`."""
    from agno.knowledge.knowledge import Knowledge
    from agno.vectordb.pgvector import PgVector
    from agno.vectordb.search import SearchType

    from apps.opie.agentos.config import agent_os_config

    ensure_tables(kb)
    vector_db = PgVector(
        table_name=table_name(kb.pk),
        schema=SCHEMA,
        db=agent_os_config.get_db(),
        embedder=embedder_for(kb.indexed_embedder),
        search_type=SearchType.hybrid,
        create_schema=False,
    )
    return Knowledge(name=kb.name, description=kb.description, vector_db=vector_db)
