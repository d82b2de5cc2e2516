"""Benchmark the local MiniLM embedder; prints one JSON object per line.

Run from the repository root: .venv/bin/python -m bench.embedder
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time

from apps.opie.agentos.embedders import MiniLMEmbedder

BATCH_SIZES = (1, 16, 64)
SENTENCE_COUNT = 500
WORDS = (
    *("refund", "invoice", "customer", "order", "shipping", "delay", "weather", "Paris"),
    *("office", "holiday", "agent", "tool", "search", "document", "vector", "database"),
    *("Django", "Python", "query", "answer", "policy", "account", "password", "payment"),
    *("subscription", "report", "schedule", "meeting", "delivery", "support", "ticket"),
)


def synthetic_sentences(count: int, seed: int = 0) -> list[str]:
    """Return `count` deterministic sentences of 4 to 40 words."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))).capitalize() + "."
        for _ in range(count)
    ]


def emit(record: dict[str, object]) -> None:
    """Print one JSON line and flush, so partial results survive an interrupted run."""
    print(json.dumps(record), flush=True)


def main() -> None:
    """Time model loading and embedding at each batch size, then report peak RSS."""
    texts = synthetic_sentences(SENTENCE_COUNT)
    embedder = MiniLMEmbedder()

    started = time.perf_counter()
    embedder.embed_one("warm up")
    emit({"event": "load", "seconds": round(time.perf_counter() - started, 3)})

    for batch_size in BATCH_SIZES:
        started = time.perf_counter()
        embedder.embed_array(texts, batch_size=batch_size)
        elapsed = time.perf_counter() - started
        emit(
            {
                "event": "embed",
                "batch_size": batch_size,
                "texts": len(texts),
                "seconds": round(elapsed, 3),
                "texts_per_second": round(len(texts) / elapsed, 1),
            }
        )

    # Linux reports ru_maxrss in KiB, macOS in bytes.
    divisor = 1024 * 1024 if sys.platform == "darwin" else 1024
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / divisor
    emit({"event": "peak_rss", "mib": round(peak_mib, 1)})


if __name__ == "__main__":
    main()
