"""Tests for the local MiniLM embedder and the agno embedder factory."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from apps.opie.agentos import embedders
from apps.opie.agentos.embedders import (
    DIMENSIONS,
    WEIGHTS_SHA256,
    EmbedderError,
    MiniLMEmbedder,
    build_embedder,
    default_model_dir,
    load_model,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_COSINE = 0.9999


def fixtures_dir() -> Path:
    """Return the shared fixtures directory, overridable with OPIE_FIXTURES_DIR."""
    override = os.environ.get("OPIE_FIXTURES_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@cache
def reference() -> dict[str, Any]:
    """Return the reference embeddings produced by sentence-transformers with torch."""
    data: dict[str, Any] = json.loads(
        (fixtures_dir() / "minilm_reference.json").read_text(encoding="utf-8")
    )
    return data


def reference_texts() -> list[str]:
    """Return the reference texts in fixture order."""
    return [case["text"] for case in reference()["cases"]]


def reference_vectors() -> np.ndarray:
    """Return the reference vectors as a (cases, 384) array."""
    return np.array([case["embedding"] for case in reference()["cases"]], dtype=np.float64)


def cosines(actual: Any, expected: np.ndarray) -> np.ndarray:
    """Return the row-wise cosine similarity of two stacks of vectors."""
    got = np.asarray(actual, dtype=np.float64)
    dots = (got * expected).sum(axis=1)
    return dots / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    """Return one embedder shared by the tests of this module."""
    return MiniLMEmbedder()


def test_it_is_checked_against_the_fixture_weights_and_dimension() -> None:
    assert reference()["weights_sha256"] == WEIGHTS_SHA256
    assert reference()["dimension"] == DIMENSIONS == MiniLMEmbedder.dimensions
    assert len(reference()["cases"]) == 20


def test_it_reproduces_the_reference_vectors_one_at_a_time(embedder: MiniLMEmbedder) -> None:
    vectors = [embedder.embed_one(text) for text in reference_texts()]

    assert all(len(vector) == DIMENSIONS for vector in vectors)
    assert all(isinstance(value, float) for value in vectors[0])
    assert cosines(vectors, reference_vectors()).min() > MIN_COSINE


@pytest.mark.parametrize("batch_size", [20, 7, 1])
def test_it_reproduces_the_reference_vectors_in_one_batch(
    embedder: MiniLMEmbedder, batch_size: int
) -> None:
    vectors = embedder.embed(reference_texts(), batch_size=batch_size)

    assert len(vectors) == len(reference_texts())
    assert cosines(vectors, reference_vectors()).min() > MIN_COSINE


def test_it_gives_the_same_vector_with_and_without_batch_padding(
    embedder: MiniLMEmbedder,
) -> None:
    alone = np.array([embedder.embed_one(text) for text in reference_texts()])
    batched = embedder.embed_array(reference_texts(), batch_size=len(reference_texts()))

    assert cosines(batched, alone).min() > 0.999999


def test_it_returns_unit_length_float32_vectors(embedder: MiniLMEmbedder) -> None:
    array = embedder.embed_array(["one", "two words", ""])

    assert array.shape == (3, DIMENSIONS)
    assert array.dtype == np.float32
    assert np.allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)


def test_it_truncates_texts_to_256_tokens(embedder: MiniLMEmbedder) -> None:
    long_text = max(reference_texts(), key=len)
    encoded = embedder.model.tokenizer.encode(long_text + " extra words at the end")

    assert len(encoded.ids) == 256
    assert (
        cosines(
            [embedder.embed_one(long_text + " extra words at the end")],
            np.array([embedder.embed_one(long_text)]),
        )[0]
        > 0.999999
    )


def test_it_returns_nothing_for_no_texts(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]) == []
    assert embedder.embed_array([]).shape == (0, DIMENSIONS)


def test_it_refuses_a_bare_string_where_a_list_is_expected(embedder: MiniLMEmbedder) -> None:
    with pytest.raises(TypeError, match="embed_one"):
        embedder.embed("not a list")


def test_it_gives_the_same_vectors_when_called_from_several_threads(
    embedder: MiniLMEmbedder,
) -> None:
    texts = reference_texts()
    expected = embedder.embed_array(texts)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            shifted = texts[worker:] + texts[:worker]
            results[worker] = np.roll(embedder.embed_array(shifted, batch_size=4), worker, axis=0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert all(np.allclose(result, expected, atol=1e-6) for result in results.values())


def test_it_loads_the_packaged_model_once_per_process() -> None:
    assert load_model() is load_model(default_model_dir())
    assert MiniLMEmbedder().model is MiniLMEmbedder().model


def test_it_refuses_tampered_weights(tmp_path: Path) -> None:
    tampered = tmp_path / "model"
    shutil.copytree(default_model_dir(), tampered)
    weights = tampered / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))

    with pytest.raises(EmbedderError, match="failed verification"):
        load_model(tampered)
    with pytest.raises(EmbedderError, match=WEIGHTS_SHA256):
        MiniLMEmbedder(model_dir=tampered).embed(["hello"])


def test_it_reports_a_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="Cannot read model weights"):
        MiniLMEmbedder(model_dir=tmp_path / "absent").embed_one("hello")


def test_it_keeps_minilm_usable_without_importing_agno() -> None:
    script = (
        "import sys\n"
        "from apps.opie.agentos.embedders import MiniLMEmbedder\n"
        "assert len(MiniLMEmbedder().embed_one('hi')) == 384\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'agno'], 'agno imported'\n"
    )
    # A fresh interpreter is the only way to see imports that other tests have not made.
    completed = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )

    assert completed.returncode == 0, completed.stderr


def test_it_adapts_to_agno_with_384_floats() -> None:
    from agno.knowledge.embedder.base import Embedder

    adapter = build_embedder("local")
    vector = adapter.get_embedding("How long does a refund take?")
    with_usage, usage = adapter.get_embedding_and_usage("How long does a refund take?")

    assert isinstance(adapter, Embedder)
    assert isinstance(adapter, embedders.LocalEmbedder)
    assert adapter.dimensions == DIMENSIONS
    assert adapter.enable_batch is True
    assert len(vector) == DIMENSIONS
    assert all(isinstance(value, float) for value in vector)
    assert with_usage == vector
    assert usage is None
    assert cosines([vector], reference_vectors()[:1])[0] > MIN_COSINE


def test_it_embeds_asynchronously_with_the_same_results() -> None:
    adapter = embedders.LocalEmbedder()
    texts = reference_texts()

    async def scenario() -> tuple[list[float], list[float], list[list[float]], list[Any]]:
        one = await adapter.async_get_embedding(texts[0])
        one_with_usage, _ = await adapter.async_get_embedding_and_usage(texts[0])
        many, usages = await adapter.async_get_embeddings_batch_and_usage(texts)
        return one, one_with_usage, many, usages

    one, one_with_usage, many, usages = asyncio.run(scenario())

    assert one == one_with_usage
    assert cosines([one], np.array([many[0]]))[0] > 0.999999
    assert cosines(many, reference_vectors()).min() > MIN_COSINE
    assert usages == [None] * len(texts)


def test_it_keeps_the_event_loop_responsive_while_embedding() -> None:
    adapter = embedders.LocalEmbedder()
    texts = [f"{text} {index}" for index, text in enumerate(reference_texts() * 6)]

    async def scenario() -> int:
        ticks = 0
        task = asyncio.create_task(adapter.async_get_embeddings_batch_and_usage(texts))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.001)
        await task
        return ticks

    # A blocking implementation would finish before the loop could tick a second time.
    assert asyncio.run(scenario()) > 2


def test_it_surfaces_adapter_failures_as_agno_embedding_errors(tmp_path: Path) -> None:
    from agno.exceptions import EmbeddingError

    adapter = embedders.LocalEmbedder(model_dir=str(tmp_path / "absent"))

    with pytest.raises(EmbeddingError) as caught:
        adapter.get_embedding("hello")
    assert isinstance(caught.value.__cause__, EmbedderError)


def test_it_copies_and_pickles_the_adapter_without_the_weights() -> None:
    adapter = build_embedder("local")
    adapter.get_embedding("warm up")

    restored = pickle.loads(pickle.dumps(adapter))  # noqa: S301
    duplicate = copy.deepcopy(adapter)

    assert len(pickle.dumps(adapter)) < 10_000
    assert type(restored) is embedders.LocalEmbedder
    assert restored.get_embedding("same") == duplicate.get_embedding("same")


def test_it_rejects_local_options_it_cannot_honour() -> None:
    with pytest.raises(EmbedderError, match="384"):
        build_embedder("local", dimensions=768)
    with pytest.raises(EmbedderError, match="only runs"):
        build_embedder("local", model="nomic-embed-text")
    with pytest.raises(EmbedderError, match="base_url"):
        build_embedder("local", base_url="http://localhost:11434")
    assert build_embedder(" Local ", model="all-MiniLM-L6-v2").dimensions == DIMENSIONS


def test_it_rejects_an_unknown_kind_listing_the_valid_ones() -> None:
    with pytest.raises(EmbedderError, match="Unknown embedder kind 'cohere'") as caught:
        build_embedder("cohere")
    assert "local, ollama, openai" in str(caught.value)


def test_it_builds_the_openai_embedder() -> None:
    from agno.knowledge.embedder.openai import OpenAIEmbedder

    built = build_embedder("openai", model="text-embedding-3-small", dimensions=512)

    assert isinstance(built, OpenAIEmbedder)
    assert built.id == "text-embedding-3-small"
    assert built.dimensions == 512


def test_it_builds_the_ollama_embedder() -> None:
    from agno.knowledge.embedder.ollama import OllamaEmbedder

    built = build_embedder(
        "ollama", model="nomic-embed-text", dimensions=768, base_url="http://localhost:11434"
    )

    assert isinstance(built, OllamaEmbedder)
    assert built.id == "nomic-embed-text"
    assert built.host == "http://localhost:11434"
    assert built.dimensions == 768
