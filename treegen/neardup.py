"""In-loop near-duplicate index: the highest cosine similarity of a candidate to any accepted node.

The engine embeds each valid candidate and rejects it with reason ``near-duplicate`` when its
similarity to an accepted node reaches the threshold, before it can be expanded (DataGen's
group checking, done during generation); the novelty strategy scores a node 1 - that
similarity. Rows must be unit-norm, as treegen's embedders give, so a dot product is the
cosine similarity.

With faiss (faiss-cpu) the rows live in a faiss HNSW graph over float16 codes
(``IndexHNSWSQ``, M = ``HNSW_M``): 768 bytes of codes a MiniLM node plus about 144 bytes of
graph, 912 B a node in all (benchmarks/results/index.md). A reply's few candidates are
answered

- exactly while the index holds fewer than ``EXACT_BELOW`` rows: a scan of the float16 codes,
  fast at that size, and the decisions are those of an exact index;
- from ``EXACT_BELOW`` on, by the graph (efSearch = ``EF_SEARCH``): per-reply cost grows
  slowly with the run (measured: 2.2 ms CPU at 10k rows, 5.9 ms at 100k; the scan 4 -> 90 ms). A similarity the graph returns is a true one (of the float16 codes), so it
  never invents a near-duplicate; it can miss the nearest row and return a lower similarity.
  On real MiniLM embeddings (benchmarks/bench_index.py) that changed no decision of 2,000 at
  10k and 30k rows and 1 of 2,000 at 100k, at thresholds 0.9 and 0.95; 11 of 2,000 similarities
  were off by more than 0.01 at 100k. A miss lies far below the threshold, not near it, so an
  exact re-check of near-threshold answers does not help (measured: it changed nothing).

Rows are added to the graph lazily, one at a time, at the next reply-sized query (which the
engine runs in a worker thread, off the event loop); until then they wait in a small buffer that
queries scan exactly. One row at a time makes the graph a function of the order of the rows
alone, not of how they were batched: the same run gives the same answers. faiss queries run on
one OpenMP thread (set for the calling thread only): on 2 shared, busy cores a team of two
OpenMP threads made a 10-row graph query take tens of milliseconds instead of a fraction of one.

``exact_below=None`` keeps an index exact at any size and builds no graph (768 B a node): for
one-off checks, where an exact answer matters more than a flat cost.

Large query batches (``treegen metrics``) are always exact: block by block through a BLAS
matrix product, where widening a block of float16 once serves every query. Without faiss, the
rows live in fixed float16 blocks of ``BLOCK_ROWS`` and every query is such an exact scan.

Exact here means exact over the float16-rounded rows: each coordinate is off by at most 2**-11
of itself, so a cosine is off by at most ``FLOAT16_ERROR`` from float32 storage (|sum q_i x_i
e_i| <= 2**-11 sum |q_i x_i| <= 2**-11 for unit rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from treegen.errors import ConfigError

FLOAT16_ERROR = 2.0**-11 + 1e-6  # float16 rounding bound plus float32 accumulation
BLOCK_ROWS = 4096  # rows per storage block (numpy), and per step of a batched exact query
EXACT_BELOW = 5_000  # below, an exact scan costs less CPU than the graph (see index.md)
HNSW_M = 16  # graph links a node (32 at the bottom level): ~144 B a node
EF_CONSTRUCTION = 40  # faiss's default: candidates kept while linking a new row
EF_SEARCH = 128  # candidates kept while searching: higher finds the true nearest more often
_BATCH_QUERIES = 64  # more query rows than this: the exact block-by-block BLAS path
_USE_FAISS = True  # a seam for tests of the numpy path


def _faiss() -> Any:
    if not _USE_FAISS:
        return None
    try:
        import faiss
    except ImportError:
        return None
    return faiss


class NearDuplicateIndex:
    """Accepted-node embeddings, queried for the highest cosine similarity."""

    def __init__(self, dim: int, threshold: float, exact_below: int | None = EXACT_BELOW,
                 ef_search: int = EF_SEARCH):
        """``exact_below=None``: always exact (no graph is built; for one-off checks such as
        ``treegen metrics``' contamination, where an exact answer matters more than a flat cost)."""
        if dim <= 0:
            raise ConfigError(f"Near-duplicate index dimension must be positive, got {dim}.")
        if not (0.0 < threshold <= 1.0):
            raise ConfigError(
                f"Near-duplicate threshold {threshold} is not a cosine similarity in (0, 1]; "
                "use e.g. 0.9 (higher rejects only closer paraphrases)."
            )
        self.dim = dim
        self.threshold = float(threshold)
        self.exact_below = exact_below
        self.ef_search = int(ef_search)
        self._size = 0
        self._buffer: np.ndarray | None = None  # float32 (BLOCK_ROWS, dim), reused by batched queries
        self._faiss_mod = _faiss()
        self._graph: Any = None
        self._codes: Any = None  # the graph's float16 storage: an exact flat index of the same rows
        self._pending: list[np.ndarray] = []  # faiss: float16 rows not yet in the graph
        self._blocks: list[np.ndarray] = []  # numpy: float16 (BLOCK_ROWS, dim), the last partly filled
        faiss = self._faiss_mod
        if faiss is not None and exact_below is None:
            self._codes = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        elif faiss is not None:
            self._graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            self._graph.hnsw.efConstruction = EF_CONSTRUCTION
            self._codes = faiss.downcast_index(self._graph.storage)

    def __len__(self) -> int:
        return self._size

    @property
    def backend(self) -> str:
        if self._graph is not None:
            return "faiss-hnsw-fp16"
        return "faiss-fp16" if self._codes is not None else "numpy-fp16"

    @property
    def approximate(self) -> bool:
        """Whether a reply-sized query now goes through the graph (not an exact scan)."""
        return self._graph is not None and self.exact_below is not None and self._size >= self.exact_below

    @property
    def stored_bytes(self) -> int:
        """Bytes held for the rows: float16 codes, graph links and levels, rows waiting."""
        if self._codes is None:
            return sum(b.nbytes for b in self._blocks)
        if self._graph is None:
            return int(self._codes.ntotal * self._codes.code_size)
        h = self._graph.hnsw
        graph = h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return int(self._codes.ntotal * self._codes.code_size + graph + sum(p.nbytes for p in self._pending))

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
        """Add unit-norm rows (the embeddings of newly accepted nodes). Cheap: the graph links
        them at the next reply-sized query."""
        rows = self._as_rows(vectors)
        if rows.shape[0] == 0:
            return
        if self._graph is not None:
            self._pending.append(rows.astype(np.float16))
            self._size += rows.shape[0]
            return
        if self._codes is not None:
            self._codes.add(np.ascontiguousarray(rows))
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
        """Per query row, the highest cosine similarity to anything added (-inf when empty).

        Exact (over the float16 rows) below ``exact_below`` rows and for more than 64 query
        rows; otherwise from the HNSW graph, which may miss the nearest row (never overstates)."""
        queries = self._as_rows(vectors)
        best = np.full(queries.shape[0], -np.inf, dtype=np.float32)
        if self._size == 0 or queries.shape[0] == 0:
            return best
        if self._codes is None or queries.shape[0] > _BATCH_QUERIES:
            return self._exact_batched(queries, best)
        self._faiss_mod.omp_set_num_threads(1)  # this thread only; see the module's docstring
        self.link_pending()
        queries = np.ascontiguousarray(queries)
        if not self.approximate:
            sims, _ = self._codes.search(queries, 1)
        else:
            params = self._faiss_mod.SearchParametersHNSW(efSearch=self.ef_search)
            sims, _ = self._graph.search(queries, 1, params=params)
        return sims[:, 0].astype(np.float32)

    def link_pending(self) -> None:
        """Put the rows waiting since the last query into the graph (the next reply-sized query
        does it anyway). One row per faiss call, so that how rows were batched does not change
        the graph. About 0.05-0.25 ms CPU a row: after a restore of many rows, call it in a
        worker thread rather than leave it to the first reply."""
        if self._pending:
            self._faiss_mod.omp_set_num_threads(1)
        for chunk in self._pending:
            wide = chunk.astype(np.float32)
            for i in range(wide.shape[0]):
                self._graph.add(wide[i : i + 1])
        self._pending = []

    def _exact_batched(self, queries: np.ndarray, best: np.ndarray) -> np.ndarray:
        if self._buffer is None:
            self._buffer = np.empty((BLOCK_ROWS, self.dim), dtype=np.float32)
        if self._codes is None:
            for start in range(0, self._size, BLOCK_ROWS):
                n = min(BLOCK_ROWS, self._size - start)
                wide = self._buffer[:n]
                np.copyto(wide, self._blocks[start // BLOCK_ROWS][:n], casting="same_kind")
                np.maximum(best, (queries @ wide.T).max(axis=1), out=best)
            return best
        linked = int(self._codes.ntotal)
        for start in range(0, linked, BLOCK_ROWS):
            n = min(BLOCK_ROWS, linked - start)
            wide = self._buffer[:n]
            self._codes.reconstruct_n(start, n, wide)  # faiss's own SIMD widening
            np.maximum(best, (queries @ wide.T).max(axis=1), out=best)
        for chunk in self._pending:
            for start in range(0, chunk.shape[0], BLOCK_ROWS):
                part = chunk[start : start + BLOCK_ROWS].astype(np.float32)
                np.maximum(best, (queries @ part.T).max(axis=1), out=best)
        return best

    def is_near_duplicate(self, vector: np.ndarray) -> tuple[bool, float]:
        """(similarity >= threshold, that similarity) for one vector; (False, -inf) when empty."""
        sim = float(self.max_similarity(vector)[0])
        return sim >= self.threshold, sim
