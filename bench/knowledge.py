"""Knowledge ingestion and search at scale; prints one JSON object per line.

Run from the repository root: .venv/bin/python -m bench.knowledge [--chunks 100000]
Works in a throwaway database (`opie_bench`) on the configured server, dropped at the end.

1. Ingestion: documents through the real task path (parse, chunk, embed, write) against the
   raw MiniLM embedder on the same chunk texts, in the same run. Target: >= 90%.
2. Search over `--chunks` chunks, every vector a real MiniLM embedding. Chunks are short
   (six words) so that embedding 100,000 of them takes minutes, not an hour. Reported:
   latency of the HNSW index against an exact scan, recall@10 of HNSW against exact
   (target >= 0.95), our `search()` end to end, and our `search()` against hand-written
   SQL doing the same work on a plain psycopg connection (target <= 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Final

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATABASE = "opie_bench"
CHUNKS_PER_DOCUMENT = 100
TOPICS = 200
TOPIC_WORDS = 40
CHUNK_WORDS = 6

RAW_HYBRID: Final = """
WITH query AS (
    SELECT replace(plainto_tsquery('english', %(text)s)::text, ' & ', ' | ')::tsquery AS tsq
)
SELECT c.document_id, c.chunk_index, c.content, d.title,
       0.5 * greatest(1 - (c.embedding <=> %(v)s::vector), 0)
       + 0.5 * ts_rank_cd(c.fts, query.tsq) / (ts_rank_cd(c.fts, query.tsq) + 0.1) AS score
FROM {t} c
JOIN opie_knowledgedocument d ON d.id = c.document_id, query
WHERE c.id IN (
    (SELECT id FROM {t} ORDER BY embedding <=> %(v)s::vector LIMIT 40)
    UNION
    (SELECT id FROM {t}, query WHERE fts @@ query.tsq
     ORDER BY ts_rank_cd(fts, query.tsq) DESC LIMIT 40)
)
ORDER BY score DESC, c.document_id, c.chunk_index LIMIT 10
"""
RAW_VECTOR: Final = (
    "SELECT c.document_id, c.chunk_index, c.content, d.title, "
    "1 - (c.embedding <=> %(v)s::vector) AS score FROM {t} c "
    "JOIN opie_knowledgedocument d ON d.id = c.document_id "
    "ORDER BY c.embedding <=> %(v)s::vector LIMIT 10"
)
NEIGHBOURS: Final = "SELECT id FROM {t} ORDER BY embedding <=> %s::vector LIMIT 10"


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line and flush, so partial results survive an interrupted run."""
    print(json.dumps({"bench": "knowledge", **record}), flush=True)


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds."""
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)] * 1000, 2),
    }


class Corpus:
    """Sentences about numbered topics, words drawn from MiniLM's own vocabulary."""

    def __init__(self, seed: int = 7) -> None:
        from apps.opie.agentos.embedders import load_model

        vocabulary = sorted(
            word
            for word in load_model().tokenizer.get_vocab()
            if word.isalpha() and word.isascii() and len(word) >= 4
        )
        self.rng = random.Random(seed)
        self.general = vocabulary
        self.topics = [self.rng.sample(vocabulary, TOPIC_WORDS) for _ in range(TOPICS)]

    def sentence(self, topic: int | None = None, words: int = 12) -> str:
        """One sentence, mostly of one topic's words."""
        chosen = self.topics[self.rng.randrange(TOPICS) if topic is None else topic]
        picked = [
            self.rng.choice(chosen) if self.rng.random() < 0.7 else self.rng.choice(self.general)
            for _ in range(words)
        ]
        return " ".join(picked).capitalize() + "."

    def document(self, characters: int) -> str:
        """A document of about this many characters about one topic."""
        topic = self.rng.randrange(TOPICS)
        text: list[str] = []
        while sum(len(s) + 1 for s in text) < characters:
            text.append(self.sentence(topic, words=self.rng.randint(8, 20)))
        return " ".join(text)


def bench_ingestion(corpus: Corpus, owner: Any, chunks: int, rounds: int) -> None:
    """Chunks per second through ingestion against the raw embedder, in alternating rounds.

    Each round embeds the same chunk texts raw and ingests them as fresh documents, back to
    back, so a busy neighbour on the machine slows both sides of a round alike.
    """
    from apps.opie.agentos.embedders import MiniLMEmbedder
    from apps.opie.agentos.knowledge import ingest_document
    from apps.opie.agentos.knowledge.ingest import chunk_text
    from apps.opie.models import KnowledgeBase, KnowledgeDocument

    kb = KnowledgeBase.objects.create(owner=owner, name="ingestion")
    per_document = 20
    texts = [
        corpus.document(per_document * (kb.chunk_size - kb.chunk_overlap))
        for _ in range(max(1, chunks // per_document))
    ]
    per_text = [chunk_text(t, kb.chunk_size, kb.chunk_overlap) for t in texts]
    chunk_texts = [c for chunks_of_text in per_text for c in chunks_of_text]
    raw = MiniLMEmbedder()
    raw.embed_one("warm up")
    serial = iter(range(1_000_000))

    def ingest(batch: list[str]) -> float:
        documents = [
            KnowledgeDocument.objects.create(
                knowledge_base=kb,
                source="text",
                title="doc",
                text=t,
                content_hash=f"i{next(serial)}",
            )
            for t in batch
        ]
        started = time.perf_counter()
        for document in documents:
            assert ingest_document(document.pk) == "ready"
        return time.perf_counter() - started

    def raw_seconds() -> float:
        started = time.perf_counter()
        # The same calls ingestion makes: one per document (how texts are grouped into
        # batches changes the embedder's speed by itself).
        for chunks_of_text in per_text:
            raw.embed(chunks_of_text)
        return time.perf_counter() - started

    # Warm both paths up: agno's imports, the table, and numpy's buffers for long batches.
    raw_seconds()
    ingest(texts[:1])
    raw_rates, ingest_rates = [], []
    for round_number in range(rounds):
        # Alternating which side goes first keeps drift on a shared machine from favouring one.
        if round_number % 2:
            ingest_time, raw_time = ingest(texts), raw_seconds()
        else:
            raw_time, ingest_time = raw_seconds(), ingest(texts)
        raw_rates.append(len(chunk_texts) / raw_time)
        ingest_rates.append(len(chunk_texts) / ingest_time)
    ratios = [i / r for i, r in zip(ingest_rates, raw_rates, strict=True)]
    emit(
        {
            "event": "ingestion",
            "chunks": len(chunk_texts),
            "chunk_chars": kb.chunk_size,
            "rounds": rounds,
            "ingest_chunks_per_s": round(statistics.median(ingest_rates), 2),
            "raw_embedder_chunks_per_s": round(statistics.median(raw_rates), 2),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
            "target": ">= 0.90",
        }
    )


def load_scale_corpus(corpus: Corpus, owner: Any, total: int) -> Any:
    """A knowledge base of `total` chunks with its HNSW and GIN indexes built after loading."""
    from django.db import connection, transaction

    from apps.opie.agentos.embedders import MiniLMEmbedder
    from apps.opie.agentos.knowledge import store
    from apps.opie.models import KnowledgeBase, KnowledgeDocument

    kb = KnowledgeBase.objects.create(owner=owner, name="scale")
    name = store.table_name(kb.pk)
    started = time.perf_counter()
    texts = [corpus.sentence(words=CHUNK_WORDS) for _ in range(total)]
    vectors = MiniLMEmbedder().embed_array(texts, batch_size=128)
    embedded = time.perf_counter() - started

    started = time.perf_counter()
    documents = KnowledgeDocument.objects.bulk_create(
        KnowledgeDocument(
            knowledge_base=kb,
            source="text",
            title=f"scale {n}",
            status="ready",
            content_hash=f"s{n}",
            chunk_count=CHUNKS_PER_DOCUMENT,
            chunks_done=CHUNKS_PER_DOCUMENT,
        )
        for n in range(-(-total // CHUNKS_PER_DOCUMENT))
    )
    with transaction.atomic():
        store.create_table(name, kb.dimensions)
        for n, document in enumerate(documents):
            span = slice(n * CHUNKS_PER_DOCUMENT, (n + 1) * CHUNKS_PER_DOCUMENT)
            store.copy_chunks(name, document, owner.pk, texts[span], vectors[span].tolist())
    loaded = time.perf_counter() - started

    started = time.perf_counter()
    with connection.cursor() as cursor:
        # The graph of 100,000 x 384 floats needs ~200 MB to build in memory instead of on disk.
        cursor.execute("SET maintenance_work_mem = '1GB'")
        store.create_indexes(name, kb.dimensions)
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute(store.q("VACUUM ANALYZE {t}", t=name))
        cursor.execute("ANALYZE opie_knowledgedocument")
    indexed = time.perf_counter() - started
    kb.indexed_embedder = store.signature(kb)
    KnowledgeBase.objects.filter(pk=kb.pk).update(indexed_embedder=kb.indexed_embedder)
    emit(
        {
            "event": "scale_load",
            "chunks": total,
            "chunk_words": CHUNK_WORDS,
            "embed_s": round(embedded, 1),
            "copy_s": round(loaded, 1),
            "index_build_s": round(indexed, 1),
        }
    )
    return kb


def bench_search(kb: Any, texts: list[str], query_vectors: Any) -> None:
    """Latency, recall and overhead of search over the scale corpus."""
    import psycopg
    from django.conf import settings
    from django.db import connection

    from apps.opie.agentos.knowledge import search, store

    name = store.table_name(kb.pk)
    embedder = store.embedder_for(kb.indexed_embedder)
    conf = connection.settings_dict
    raw = psycopg.connect(
        dbname=conf["NAME"],
        user=conf["USER"],
        password=conf.get("PASSWORD") or None,
        host=conf.get("HOST") or None,
        port=conf.get("PORT") or None,
        autocommit=True,
    )
    raw.execute(f"SET hnsw.ef_search = {int(settings.AGENTOS_HNSW_EF_SEARCH)}")
    hybrid_sql = store.q(RAW_HYBRID, t=name)
    vector_sql = store.q(RAW_VECTOR, t=name)
    neighbours_sql = store.q(NEIGHBOURS, t=name)
    timings: dict[str, list[float]] = {}

    def timed(key: str, call: Any) -> Any:
        started = time.perf_counter()
        result = call()
        timings.setdefault(key, []).append(time.perf_counter() - started)
        return result

    for text in texts[:10]:
        search([kb.pk], text, limit=10)
    for text in texts:
        timed("embed_query", lambda t=text: embedder.get_embedding(t))
        timed("ours_hybrid_end_to_end", lambda t=text: search([kb.pk], t, limit=10))

    # Embedding a query costs the same on both paths and, on a shared machine, varies more
    # than the SQL: queries get their vectors up front, so the comparison measures the
    # search layer.
    embeddings = dict(zip(texts, query_vectors.tolist(), strict=True))
    embedder.get_embeddings_batch_and_usage = lambda batch: (  # type: ignore[attr-defined]
        [embeddings[t] for t in batch],
        [None] * len(batch),
    )

    ef_prefix = f"SET LOCAL hnsw.ef_search = {int(settings.AGENTOS_HNSW_EF_SEARCH)}; "

    def raw_search(statement: str, text: str) -> list[Any]:
        # The same SQL on the same Django connection: what our layer adds is the difference.
        vector = store.vector_literal(embeddings[text])
        with connection.cursor() as cursor:
            cursor.execute(ef_prefix + statement, {"text": text, "v": vector})
            cursor.nextset()
            return list(cursor.fetchall())

    def psycopg_search(statement: str, text: str) -> list[Any]:
        # A separate plain psycopg connection, which also prepares repeated statements.
        vector = store.vector_literal(embeddings[text])
        return raw.execute(statement, {"text": text, "v": vector}).fetchall()

    recalls: list[float] = []
    exact_ids: list[set[str]] = []
    for n, text in enumerate(texts):
        paths: list[tuple[str, Any]] = [
            ("ours_hybrid", lambda t=text: search([kb.pk], t, limit=10)),
            ("raw_hybrid", lambda t=text: raw_search(hybrid_sql, t)),
            ("raw_hybrid_psycopg", lambda t=text: psycopg_search(hybrid_sql, t)),
            ("ours_vector", lambda t=text: search([kb.pk], t, limit=10, search_type="vector")),
            ("raw_vector", lambda t=text: raw_search(vector_sql, t)),
            ("raw_vector_psycopg", lambda t=text: psycopg_search(vector_sql, t)),
        ]
        # Whichever runs a query second finds its pages warm: rotate who goes first.
        answers: dict[str, Any] = {}
        for key, call in paths[n % len(paths) :] + paths[: n % len(paths)]:
            answers[key] = timed(key, call)
        cited = [(r.document_id, r.chunk_index) for r in answers["ours_hybrid"]]
        assert cited == [row[:2] for row in answers["raw_hybrid"]]
        vector = store.vector_literal(embeddings[text])
        # Unprepared, so each plan follows the settings of its own transaction.
        approximate = timed(
            "hnsw", lambda v=vector: raw.execute(neighbours_sql, [v], prepare=False).fetchall()
        )
        with raw.transaction():
            raw.execute("SET LOCAL enable_indexscan = off")
            exact = timed(
                "exact", lambda v=vector: raw.execute(neighbours_sql, [v], prepare=False).fetchall()
            )
        recalls.append(len({r[0] for r in approximate} & {r[0] for r in exact}) / len(exact))
        exact_ids.append({r[0] for r in exact})

    # How recall and latency trade against hnsw.ef_search (AGENTOS_HNSW_EF_SEARCH).
    for ef_search in (40, 100, 200, 400):
        raw.execute(f"SET hnsw.ef_search = {ef_search}")
        found: list[float] = []
        seconds: list[float] = []
        for text, expected in zip(texts, exact_ids, strict=True):
            vector = store.vector_literal(embeddings[text])
            started = time.perf_counter()
            ids = {r[0] for r in raw.execute(neighbours_sql, [vector], prepare=False).fetchall()}
            seconds.append(time.perf_counter() - started)
            found.append(len(ids & expected) / len(expected))
        emit(
            {
                "event": "ef_search_sweep",
                "ef_search": ef_search,
                "recall_at_10": round(statistics.mean(found), 4),
                **percentiles(seconds),
            }
        )
    raw.close()

    stats = {key: percentiles(values) for key, values in timings.items()}
    emit({"event": "latency", "queries": len(texts), "ef_search": settings.AGENTOS_HNSW_EF_SEARCH})
    for key, values in stats.items():
        emit({"event": "latency", "path": key, **values})
    emit(
        {
            "event": "recall",
            "k": 10,
            "hnsw_vs_exact": round(statistics.mean(recalls), 4),
            "min": round(min(recalls), 2),
            "target": ">= 0.95",
        }
    )
    for mode in ("hybrid", "vector"):
        ours, theirs = stats[f"ours_{mode}"], stats[f"raw_{mode}"]
        emit(
            {
                "event": "overhead",
                "search_type": mode,
                "ours_over_raw_p50": round(ours["p50_ms"] / theirs["p50_ms"], 3),
                "ours_over_raw_p95": round(ours["p95_ms"] / theirs["p95_ms"], 3),
                "ours_over_psycopg_p50": round(
                    ours["p50_ms"] / stats[f"raw_{mode}_psycopg"]["p50_ms"], 3
                ),
                "target": "<= 1.2",
            }
        )


def main() -> None:
    """Set up a throwaway database, run both benchmarks, drop it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks in the search corpus")
    parser.add_argument("--ingest-chunks", type=int, default=60, help="chunks per round")
    parser.add_argument("--rounds", type=int, default=3, help="ingestion rounds")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the opie_bench database")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    os.environ.setdefault("AGNO_TELEMETRY", "false")
    import django

    django.setup()
    from django.db import connection

    from apps.accounts.models import User
    from apps.opie.agentos.embedders import MiniLMEmbedder

    original = connection.settings_dict["NAME"]
    connection.settings_dict["TEST"]["NAME"] = BENCH_DATABASE
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=args.keep)
    try:
        owner = User.objects.create_user(f"bench-{time.time_ns()}@opie.local", "bench-pw-1")
        corpus = Corpus()
        bench_ingestion(corpus, owner, args.ingest_chunks, args.rounds)
        kb = load_scale_corpus(corpus, owner, args.chunks)
        texts = [corpus.sentence(words=CHUNK_WORDS) for _ in range(args.queries)]
        bench_search(kb, texts, MiniLMEmbedder().embed_array(texts))
    finally:
        connection.creation.destroy_test_db(original, verbosity=0, keepdb=args.keep)


if __name__ == "__main__":
    main()
