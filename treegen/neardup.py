"""In-loop near-duplicate index: cosine similarity of a candidate against every accepted node.

The engine embeds each valid candidate and rejects it with reason ``near-duplicate`` when its
similarity to an accepted node reaches the threshold, before it can be expanded (DataGen's
group checking, done during generation). Rows must be unit-norm, as treegen's embedders give,
so a dot product is the cosine similarity.

Storage is one preallocated float32 matrix that doubles when full (amortised O(1) per add);
a query is one matrix product over the filled rows, in blocks to bound memory.
"""

from __future__ import annotations

import numpy as np

from treegen.errors import ConfigError

_INITIAL_CAPACITY = 256
_QUERY_BLOCK = 4096  # index rows per block of a query: bounds the temporary (queries x block) matrix


class NearDuplicateIndex:
    """Accepted-node embeddings, queried for the highest cosine similarity."""

    def __init__(self, dim: int, threshold: float):
        if dim <= 0:
            raise ConfigError(f"Near-duplicate index dimension must be positive, got {dim}.")
        if not (0.0 < threshold <= 1.0):
            raise ConfigError(
                f"Near-duplicate threshold {threshold} is not a cosine similarity in (0, 1]; "
                "use e.g. 0.9 (higher rejects only closer paraphrases)."
            )
        self.dim = dim
        self.threshold = float(threshold)
        self._matrix = np.zeros((_INITIAL_CAPACITY, dim), dtype=np.float32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _as_rows(self, vectors: np.ndarray) -> np.ndarray:
        rows = np.asarray(vectors, dtype=np.float32)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ConfigError(
                f"Near-duplicate index expects vectors of dimension {self.dim}, got shape {rows.shape}; "
                "embed candidates with the same embedder as the accepted nodes."
            )
        return rows

    def add(self, vectors: np.ndarray) -> None:
        """Add unit-norm rows (the embeddings of newly accepted nodes)."""
        rows = self._as_rows(vectors)
        need = self._size + rows.shape[0]
        if need > self._matrix.shape[0]:
            capacity = self._matrix.shape[0]
            while capacity < need:
                capacity *= 2
            grown = np.zeros((capacity, self.dim), dtype=np.float32)
            grown[: self._size] = self._matrix[: self._size]
            self._matrix = grown
        self._matrix[self._size : need] = rows
        self._size = need

    def max_similarity(self, vectors: np.ndarray) -> np.ndarray:
        """Per query row, the highest cosine similarity to anything added (-inf when empty)."""
        queries = self._as_rows(vectors)
        best = np.full(queries.shape[0], -np.inf, dtype=np.float32)
        for start in range(0, self._size, _QUERY_BLOCK):
            block = self._matrix[start : min(start + _QUERY_BLOCK, self._size)]
            np.maximum(best, (queries @ block.T).max(axis=1), out=best)
        return best

    def is_near_duplicate(self, vector: np.ndarray) -> tuple[bool, float]:
        """(similarity >= threshold, that similarity) for one vector; (False, -inf) when empty."""
        sim = float(self.max_similarity(vector)[0])
        return sim >= self.threshold, sim
