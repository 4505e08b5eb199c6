"""The ``minilm-frozen`` student: frozen all-MiniLM-L6-v2 embeddings + the linear heads; minutes.

Embeddings are kept in an ``EmbeddingCache`` that belongs to the student (or that callers
share on purpose, e.g. several students scoring the same OOD test sets): nothing is cached
process-wide, so one caller's texts never fill another's memory.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, ClassVar

import numpy as np

from treegen.students.base import (
    LinearStudent, ProgressCallback, filled_text, progress_counter,
)
from treegen.task import Example

EMBEDDING_DIM = 384


class EmbeddingCache:
    """Text -> embedding, at most ``max_items`` (oldest dropped first); 1.5 KB an item for MiniLM."""

    def __init__(self, max_items: int = 200_000, embed: Callable[[list[str]], np.ndarray] | None = None):
        self.max_items = max_items
        self._embed = embed
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, text: object) -> bool:
        return text in self._items

    def embed(self, texts: list[str], on_progress: ProgressCallback | None = None, what: str = "texts",
              chunk: int = 256) -> np.ndarray:
        """Embeddings of ``texts`` (rows in order), computing only those not cached."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._items))
        if todo:
            embed = self._embed or _minilm_embed
            advance = progress_counter(on_progress, len(todo), f"embedding {what}")
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                for t, v in zip(part, embed(part)):
                    self._items[t] = v
                    if len(self._items) > self.max_items:
                        self._items.popitem(last=False)
                advance(len(part))
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        missing = [t for t in texts if t not in self._items]
        if missing:  # more distinct texts than the cache holds: embed the evicted ones again, uncached
            fresh = dict(zip(missing, (self._embed or _minilm_embed)(list(dict.fromkeys(missing)))))
            return np.vstack([self._items[t] if t in self._items else fresh[t] for t in texts])
        return np.vstack([self._items[t] for t in texts])


def _minilm_embed(texts: list[str]) -> np.ndarray:
    from treegen.embedders import get_embedder

    return get_embedder("minilm").embed(texts)


class MiniLMFrozenStudent(LinearStudent):
    """Frozen all-MiniLM-L6-v2 sentence embeddings + a linear head (pairwise for mcqa).

    Multiple choice, base block: cosine of question and option embeddings and their
    element-wise product; extra block: the embedding of the question completed by the option
    and of the option alone. Yes/no: question embedding (with a context: context embedding and
    the product of the two too).
    """

    name: ClassVar[str] = "minilm-frozen"
    min_train: ClassVar[int] = 8
    options: ClassVar[dict[str, type]] = {"C": float, "use_extra": bool, "max_train": int}
    C_GRID = (0.1, 0.3, 1.0, 3.0)
    CACHE_MAX = 200_000  # embeddings kept by one student's cache

    def __init__(self, C: float | None = None, use_extra: bool | None = None, max_train: int | None = 3000,
                 cache: EmbeddingCache | None = None):
        super().__init__(C, use_extra)
        self.max_train = max_train
        self.cache = cache if cache is not None else EmbeddingCache(self.CACHE_MAX)

    def fit(self, train: list[Example], dev: list[Example] | None = None, seed: int = 0,
            on_progress: ProgressCallback | None = None) -> "MiniLMFrozenStudent":
        n_all = len(train)
        if self.max_train is not None and len(train) > self.max_train:
            # Embedding is the slow part on a CPU: a seeded sample, stated in info.
            idx = sorted(np.random.default_rng(seed).choice(len(train), self.max_train, replace=False))
            train = [train[i] for i in idx]
        if dev is not None and self.max_train is not None and len(dev) > self.max_train // 2:
            idx = sorted(np.random.default_rng(seed + 1).choice(len(dev), self.max_train // 2, replace=False))
            dev = [dev[i] for i in idx]
        super().fit(train, dev, seed, on_progress)
        self.info.update(n_train_available=n_all, n_train_used=len(train), max_train=self.max_train)
        return self

    def _embed(self, texts: list[str], on_progress: ProgressCallback | None, what: str) -> np.ndarray:
        return self.cache.embed(texts, on_progress, what)

    def _yesno_features(self, examples: list[Example], on_progress: ProgressCallback | None) -> Any:
        q = self._embed([e.question for e in examples], on_progress, "questions")
        if not any(e.context for e in examples):
            return q
        c = self._embed([e.context or "" for e in examples], on_progress, "contexts")
        return np.hstack([q, c, q * c * 10.0])

    def _option_blocks(self, examples: list[Example], on_progress: ProgressCallback | None,
                       extra: bool = True) -> tuple[Any, Any]:
        questions = [(e.context + " " if e.context else "") + e.question for e in examples]
        q = self._embed(questions, on_progress, "questions")
        qrep = np.repeat(q, [len(e.options) for e in examples], axis=0)
        o = self._embed([opt for e in examples for opt in e.options], on_progress, "options")
        cos = (qrep * o).sum(1, keepdims=True)
        # Products of unit vectors are tiny: scaled up so that L2 does not silence them.
        base = np.hstack([cos * 10.0, qrep * o * 10.0])
        if not extra:
            return base, None
        f = self._embed([filled_text(e, opt) for e in examples for opt in e.options], on_progress,
                        "question+option")
        return base, np.hstack([f, o])
