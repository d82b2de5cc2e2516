"""Indexing documents: text from the source, chunks, vectors, then one atomic write.

A document's chunks are embedded in memory and written, with its `ready` status, in a single
transaction that first deletes whatever chunks it had: a worker killed at any point leaves
either the previous chunks or none, never part of a document, and a retry cannot duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from psycopg import sql

from apps.opie.agentos.embedders import EmbedderError
from apps.opie.agentos.knowledge import store
from apps.opie.agentos.knowledge.sources import (
    IngestionError,
    extract_text,
    fetch_url,
    kind_for_name,
)
from apps.opie.models import KnowledgeBase, KnowledgeDocument

logger = logging.getLogger(__name__)

Status = KnowledgeDocument.Status
# Chunks embedded between two progress updates: big enough for the embedder to batch well.
EMBED_GROUP = 64
# What `ingest_document` returns besides a document status.
REQUEUE = "requeue"
BUSY = "busy"
MISSING = "missing"


def ingest_document(document_id: int) -> str:
    """Index one document; returns its final status, or REQUEUE / BUSY / MISSING.

    Safe to run twice or concurrently: a document being indexed elsewhere is skipped, and
    one already ready or failed is left alone.
    """
    with store.document_lock(document_id) as acquired:
        if not acquired:
            return BUSY
        document = (
            KnowledgeDocument.objects.select_related("knowledge_base")
            .filter(pk=document_id)
            .first()
        )
        if document is None:
            return MISSING
        if document.status in (Status.READY, Status.FAILED):
            return str(document.status)
        _update(document_id, status=Status.PROCESSING, error="", chunks_done=0, chunk_count=0)
        try:
            return _index(document)
        except store.VectorsStale as exc:
            _update(document_id, status=Status.QUEUED, error=str(exc), chunks_done=0)
            return str(Status.QUEUED)
        except (IngestionError, store.KnowledgeMismatch, EmbedderError) as exc:
            _update(document_id, status=Status.FAILED, error=str(exc))
            return str(Status.FAILED)
        except Exception as exc:
            logger.exception("Indexing document %s failed", document_id)
            _update(document_id, status=Status.FAILED, error=_unexpected(exc))
            raise


def _unexpected(exc: Exception) -> str:
    from agno.exceptions import EmbeddingError

    if isinstance(exc, EmbeddingError):
        return f"The embedder could not process this document: {exc}"
    return "Indexing failed unexpectedly. Upload the document again to retry."


def _update(document_id: int, **fields: Any) -> None:
    KnowledgeDocument.objects.filter(pk=document_id).update(updated_at=timezone.now(), **fields)


def document_text(document: KnowledgeDocument) -> str:
    """The plain text of a document, from pasted text, its uploaded file or its URL."""
    if document.source == KnowledgeDocument.Source.TEXT:
        return extract_text(document.text.encode(), "text")
    if document.source == KnowledgeDocument.Source.URL:
        fetched = fetch_url(document.url)
        return extract_text(fetched.data, fetched.kind, fetched.charset)
    kind = kind_for_name(document.file.name or "")
    if kind is None:
        raise IngestionError("This type of file cannot be indexed.")
    try:
        with document.file.open("rb") as handle:
            data = handle.read()
    except (OSError, ValueError) as exc:
        raise IngestionError("The uploaded file is missing; upload it again.") from exc
    return extract_text(data, kind)


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Split text into chunks of at most `size` characters overlapping by `overlap`."""
    from agno.knowledge.chunking.fixed import FixedSizeChunking
    from agno.knowledge.document.base import Document

    pieces = FixedSizeChunking(chunk_size=size, overlap=overlap).chunk(Document(content=text))
    return [piece.content.strip() for piece in pieces if piece.content.strip()]


def _index(document: KnowledgeDocument) -> str:
    kb = document.knowledge_base
    chunks = chunk_text(document_text(document), kb.chunk_size, kb.chunk_overlap)
    limit = int(settings.AGENTOS_MAX_CHUNKS_PER_DOCUMENT)
    if len(chunks) > limit:
        raise IngestionError(
            f"This document makes {len(chunks):,} chunks, more than the limit of {limit:,}. "
            "Split it into smaller documents."
        )
    _update(document.pk, chunk_count=len(chunks))
    store.ensure_tables(kb)
    used = kb.indexed_embedder
    vectors = embed_all(used, chunks, lambda done: _update(document.pk, chunks_done=done))
    return _write(document, chunks, vectors, used)


def embed_all(
    embedder_signature: str, texts: list[str], progress: Callable[[int], None] | None = None
) -> list[list[float]]:
    """Vectors for many texts in groups, reporting how many are done after each group."""
    embedder = store.embedder_for(embedder_signature)
    dimensions = store.parse_signature(embedder_signature)[1]
    vectors: list[list[float]] = []
    for start in range(0, len(texts), EMBED_GROUP):
        vectors.extend(store.embed_texts(embedder, texts[start : start + EMBED_GROUP], dimensions))
        if progress is not None:
            progress(len(vectors))
    return vectors


def _write(
    document: KnowledgeDocument, chunks: list[str], vectors: list[list[float]], used: str
) -> str:
    kb = document.knowledge_base
    with transaction.atomic():
        store.lock_base(kb.pk, shared=True)
        current = KnowledgeBase.objects.filter(pk=kb.pk).values_list("indexed_embedder", flat=True)
        if current.first() != used:
            # The base was re-embedded meanwhile: these vectors are from the old embedder.
            _update(document.pk, status=Status.QUEUED, chunks_done=0)
            return REQUEUE
        locked = KnowledgeDocument.objects.select_for_update().filter(pk=document.pk).first()
        if locked is None:
            return MISSING
        store.delete_document_chunks(kb.pk, locked.pk)
        store.copy_chunks(store.table_name(kb.pk), locked, kb.owner_id, chunks, vectors)
        _update(
            locked.pk,
            status=Status.READY,
            error="",
            chunks_done=len(chunks),
            chunk_count=len(chunks),
        )
    return str(Status.READY)


@dataclass
class ReembedReport:
    """What `reembed` did, for the command to print."""

    previous: str
    current: str
    documents: int = 0
    chunks: int = 0
    requeue: list[int] = field(default_factory=list)


def reembed(
    kb: KnowledgeBase, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> ReembedReport:
    """Rebuild a base's vectors with its configured embedder, swapping tables atomically.

    Searches keep using the old vectors (and the old embedder) until the swap.
    """
    wanted = store.signature(kb)
    report = ReembedReport(previous=kb.indexed_embedder, current=wanted)
    store.embed_texts(store.embedder_for(wanted), ["dimension check"], kb.dimensions)
    old, new = store.table_name(kb.pk), store.table_name(kb.pk, "_next")
    if not kb.indexed_embedder or not store.table_exists(old):
        KnowledgeBase.objects.filter(pk=kb.pk).update(indexed_embedder="")
        kb.indexed_embedder = ""
        store.ensure_tables(kb)
        report.requeue = _waiting(kb)
        return report
    if kb.indexed_embedder == wanted and not force:
        return report
    store.drop_table(new)
    store.create_table(new, kb.dimensions)
    ready = KnowledgeDocument.objects.filter(knowledge_base=kb, status=Status.READY)
    for document in ready.order_by("pk"):
        rows = store.chunk_rows(old, document.pk)
        if not rows:
            continue
        texts = [text for _, text in rows]
        vectors = embed_all(wanted, texts)
        store.copy_chunks(new, document, kb.owner_id, texts, vectors)
        report.documents += 1
        report.chunks += len(rows)
        if progress is not None:
            progress(f"{document.title}: {len(rows)} chunks")
    store.create_indexes(new, kb.dimensions)
    with transaction.atomic():
        store.lock_base(kb.pk)
        report.requeue = _swap(kb, old, new)
        KnowledgeBase.objects.filter(pk=kb.pk).update(indexed_embedder=wanted)
        kb.indexed_embedder = wanted
    return report


def _swap(kb: KnowledgeBase, old: str, new: str) -> list[int]:
    documents = sql.Identifier(KnowledgeDocument._meta.db_table)
    # Chunks of documents deleted during the rebuild go; documents that became ready
    # during it were written to the old table, so they are indexed again.
    store.run(
        store.q(
            "DELETE FROM {t} WHERE document_id NOT IN (SELECT id FROM {d} WHERE "
            "knowledge_base_id = %s)",
            t=new,
            d=documents,
        ),
        [kb.pk],
    )
    rows = store.run(
        store.q(
            "SELECT id FROM {d} WHERE knowledge_base_id = %s AND status = 'ready' "
            "AND NOT EXISTS (SELECT 1 FROM {t} WHERE document_id = {d}.id)",
            t=new,
            d=documents,
        ),
        [kb.pk],
    )
    missed = [int(row[0]) for row in rows]
    KnowledgeDocument.objects.filter(pk__in=missed).update(status=Status.QUEUED, chunks_done=0)
    store.drop_table(old)
    store.rename_table(new, old)
    return _waiting(kb)


def _waiting(kb: KnowledgeBase) -> list[int]:
    # Documents that waited for the rebuild (or were sent back by it) are queued again.
    queued = KnowledgeDocument.objects.filter(knowledge_base=kb, status=Status.QUEUED)
    return list(queued.order_by("pk").values_list("pk", flat=True))
