"""In-loop near-duplicate index: cosine similarity of a candidate against every accepted node.

The engine embeds each valid candidate and rejects it with reason ``near-duplicate`` when its
similarity to an accepted node reaches the threshold, before it can be expanded (DataGen's
group checking, done during generation). Rows must be unit-norm, as treegen's embedders give,
so a dot product is the cosine similarity.

Storage is float16: 768 bytes a node for MiniLM's 384 dimensions. With faiss (faiss-cpu)
importable, the rows live in a faiss ``IndexScalarQuantizer`` of type fp16, and a reply's few
candidates are scored by its scan, which widens float16 in SIMD registers as it goes: no
float32 copy, no thread pool of ours. Without faiss, the rows live in fixed float16 blocks of
``BLOCK_ROWS`` (never copied when the index grows), widened block by block into one float32
buffer. Large query batches (``treegen metrics``) always go block by block through a BLAS
matrix product, where widening a block once serves every query.

Either way a query is an exact scan. The only difference from a float32 index is the float16
rounding of the stored vectors: each coordinate is off by at most 2**-11 of itself, so a
cosine is off by at most ``FLOAT16_ERROR`` (|sum q_i x_i e_i| <= 2**-11 sum |q_i x_i| <= 2**-11
for unit rows); dense 384-d rows measure under 1e-4 (benchmarks/bench_tokens.py). A decision
can differ from float32 storage only for a similarity that close to the threshold.
"""

from __future__ import annotations

import numpy as np

from treegen.errors import ConfigError

FLOAT16_ERROR = 2.0**-11 + 1e-6  # float16 rounding bound plus float32 accumulation
BLOCK_ROWS = 4096  # rows per storage block, and per step of a batched query
_FAISS_MAX_QUERIES = 64  # up to this many query rows, faiss's scan; beyond, BLAS per block
_USE_FAISS = True  # a seam for tests of the numpy path


def _faiss_index(dim: int):  # type: ignore[no-untyped-def]
    """A faiss fp16 inner-product index, or None without faiss."""
    if not _USE_FAISS:
        return None
    try:
        import faiss
    except ImportError:
        return None
    return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


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
        self._faiss = _faiss_index(dim)
        self._blocks: list[np.ndarray] = []  # without faiss: float16 (BLOCK_ROWS, dim), the last partly filled
        self._size = 0
        self._buffer: np.ndarray | None = None  # float32 (BLOCK_ROWS, dim), reused by queries

    def __len__(self) -> int:
        return self._size

    @property
    def backend(self) -> str:
        return "faiss-fp16" if self._faiss is not None else "numpy-fp16"

    @property
    def stored_bytes(self) -> int:
        """Bytes of the stored vectors (allocated blocks; faiss: its code array)."""
        if self._faiss is not None:
            return int(self._faiss.ntotal * self._faiss.code_size)
        return sum(b.nbytes for b in self._blocks)

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
        if self._faiss is not None:
            self._faiss.add(np.ascontiguousarray(rows))
            self._size += rows.shape[0]
            return
        done = 0
        while done < rows.shape[0]:
            used = self._size % BLOCK_ROWS
            if used == 0:
                # np.zeros maps fresh pages lazily: an unfilled block costs address space, not memory.
                self._blocks.append(np.zeros((BLOCK_ROWS, self.dim), dtype=np.float16))
            take = min(BLOCK_ROWS - used, rows.shape[0] - done)
            self._blocks[-1][used : used + take] = rows[done : done + take]
            done += take
            self._size += take

    def max_similarity(self, vectors: np.ndarray) -> np.ndarray:
        """Per query row, the highest cosine similarity to anything added (-inf when empty)."""
        queries = self._as_rows(vectors)
        best = np.full(queries.shape[0], -np.inf, dtype=np.float32)
        if self._size == 0 or queries.shape[0] == 0:
            return best
        if self._faiss is not None and queries.shape[0] <= _FAISS_MAX_QUERIES:
            sims, _ = self._faiss.search(np.ascontiguousarray(queries), 1)
            return sims[:, 0].astype(np.float32)
        if self._buffer is None:
            self._buffer = np.empty((BLOCK_ROWS, self.dim), dtype=np.float32)
        for start in range(0, self._size, BLOCK_ROWS):
            n = min(BLOCK_ROWS, self._size - start)
            wide = self._wide_block(start, n)
            np.maximum(best, (queries @ wide.T).max(axis=1), out=best)
        return best

    def _wide_block(self, start: int, n: int) -> np.ndarray:
        """Rows start..start+n as float32, in the reusable buffer."""
        assert self._buffer is not None
        wide = self._buffer[:n]
        if self._faiss is not None:
            self._faiss.reconstruct_n(start, n, wide)  # faiss's own SIMD widening
        else:
            np.copyto(wide, self._blocks[start // BLOCK_ROWS][:n], casting="same_kind")
        return wide

    def is_near_duplicate(self, vector: np.ndarray) -> tuple[bool, float]:
        """(similarity >= threshold, that similarity) for one vector; (False, -inf) when empty."""
        sim = float(self.max_similarity(vector)[0])
        return sim >= self.threshold, sim
