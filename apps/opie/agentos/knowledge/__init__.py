"""Knowledge bases on pgvector: ingestion, isolated hybrid search and citations.

Layout: one table per knowledge base (`knowledge.kb_<id>`, agno PgVector columns plus
`document_id`, `chunk_index` and a stored tsvector), not one shared table filtered by id.
Search reaches a base's rows only by naming its table, and the table names come from the
ids the server passes in, so no filter a client sends can widen the scope; agno's
`user_id=None` searching everyone's rows cannot happen. Each base also gets its own
dimensions, a small HNSW graph that needs no post-filtering (so recall does not drop for a
small base in a big shared index), and re-embedding by building a new table and swapping.

Crash safety: a document's chunks are written with its `ready` status in one transaction
(see `ingest`); a worker holds a session advisory lock on the document it indexes, which
Postgres releases when the worker dies, so `apps.opie.documents.documents_recover()` can
tell an abandoned `processing` document from a live one and queue it again.
"""

from apps.opie.agentos.knowledge.ingest import (
    BUSY,
    MISSING,
    REQUEUE,
    ReembedReport,
    ingest_document,
    reembed,
)
from apps.opie.agentos.knowledge.retrieval import Reference, SearchType, asearch, search
from apps.opie.agentos.knowledge.sources import (
    IngestionError,
    content_type_for,
    kind_for_name,
)
from apps.opie.agentos.knowledge.store import (
    KnowledgeMismatch,
    VectorsStale,
    build_knowledge,
    delete_document_chunks,
    document_in_progress,
    drop_orphan_tables,
    ensure_tables,
    parse_signature,
    stale_message,
)

__all__ = [
    "BUSY",
    "MISSING",
    "REQUEUE",
    "IngestionError",
    "KnowledgeMismatch",
    "ReembedReport",
    "Reference",
    "SearchType",
    "VectorsStale",
    "asearch",
    "build_knowledge",
    "content_type_for",
    "delete_document_chunks",
    "document_in_progress",
    "drop_orphan_tables",
    "ensure_tables",
    "ingest_document",
    "kind_for_name",
    "parse_signature",
    "reembed",
    "search",
    "stale_message",
]
