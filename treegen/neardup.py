"""In-loop near-duplicate index: the highest cosine similarity of a candidate to any accepted node.

The engine embeds each valid candidate and rejects it with reason ``near-duplicate`` when its
similarity to an accepted node reaches the threshold, before it can be expanded (DataGen's
group checking, done during generation); the novelty strategy scores a node 1 - that
similarity. Rows must be unit-norm, as treegen's embedders give, so a dot product is the
cosine similarity.

With faiss (faiss-cpu) the rows are stored as float16 codes (768 B a MiniLM node) and a reply's
few candidates are answered

- exactly while the index holds fewer than ``exact_below`` rows (5,000): a scan of the codes,
  and the decisions are those of an exact index;
- from then on by an inverted file (IVF) that grows with the run: the rows are partitioned into
  N / ``ROWS_PER_LIST`` lists (spherical k-means, fixed seed) and a query scans the lists whose
  centroids are nearest, at most ``NPROBE`` of them and, nearest first, until it has passed
  ``nprobe x rows_per_list`` rows (the scan budget: 3,072). The partition is redone each time
  the run doubles (at 5,000 x 2**j rows), so the work of a query stays flat: 3,072 rows and the
  centroids (625 at 100k) at any size. No re-partition makes more than ``MAX_LISTS`` (1,024)
  lists: past ~131k rows the lists only grow, so pauses stay bounded, and recall slowly falls. A similarity the IVF returns is a true one (of the
  float16 codes), so it never invents a near-duplicate; it can miss the nearest row when that
  row lies in a list not scanned, and return a lower similarity.

Measured (benchmarks/results/index.md, Session 5; REAL MiniLM embeddings of 33,834 questions
plus vector-space copies to 100k; 2,000 queries at each size; load ~3): CPU per reply of 10
candidates 1.19 / 1.46 / 2.52 ms at 10k / 30k / 100k rows with caches warm (2.65 just before
the re-partition at 80k; 100k / 10k = 2.1x), 1.75 / 2.70 / 3.35 ms (1.9x) with 96 MB written
between replies as the embedder does. Decisions changed by the approximation (against an exact
scan of the same float16 rows) at thresholds 0.9 and 0.95: at most 1 of 2,000 at every size.
Stored: 786 B a node (codes, an 8-byte id, the centroids). The work is flat; the time per row
scanned is not: the index leaves the CPU caches as it grows (an exact scan cost 34 ns a row at
10k, 78 ns at 100k).

Rows are added lazily: they wait in a small buffer (scanned exactly by queries) until the next
reply-sized query, which the engine runs in a worker thread, off the event loop; that query
puts them into the lists and, when the run has crossed a doubling, re-partitions: measured 65-98
ms at 10,000 rows, 0.6 s at 40,000 and 1.5 s CPU (1.8-2.0 s wall) at 80,000, the worst pause
to 100k (a k-means costs rows x lists: it grows with the square of the run); 0.025 ms CPU per
row added over the run, the re-partitions included. The partition made at N rows is trained on exactly the first N rows (a
fixed-seed sample of them), and a row's list is its nearest centroid, so the answers are a
function of the rows present and their order alone, not of how they were batched or when
queries came: the same run gives the same answers. faiss runs on one OpenMP thread (set for the
calling thread only): on 2 shared, busy cores a team of two OpenMP threads made a 10-row graph
query take 78.6 ms instead of 0.15 ms (session 4).

Memory: the index fixes glibc's mmap threshold at 64 KB when it first makes lists
(``put_large_blocks_in_own_mappings``), so a list's spare capacity is not resident, and calls
``malloc_trim(0)`` after each re-partition (``release_freed_heap``); both only on Linux/glibc.
Process RSS grew by 952 B a node for 100k rows added 4 at a time, a query after each add
(1,177 B without the mmap setting).

``exact_below=None`` keeps an index exact at any size and builds no lists (768 B a node): for
one-off checks, where an exact answer matters more than a flat cost.

Large query batches (``treegen metrics``) are always exact: block by block through a BLAS
matrix product. Without faiss, the rows live in fixed float16 blocks of ``BLOCK_ROWS`` and every
query is such an exact scan.

Exact here means exact over the float16-rounded rows: each coordinate is off by at most 2**-11
of itself, so a cosine is off by at most ``FLOAT16_ERROR`` from float32 storage (|sum q_i x_i
e_i| <= 2**-11 sum |q_i x_i| <= 2**-11 for unit rows).
"""

from __future__ import annotations

import ctypes
import platform
import time
from typing import Any, Iterator

import numpy as np

from treegen.errors import ConfigError

FLOAT16_ERROR = 2.0**-11 + 1e-6  # float16 rounding bound plus float32 accumulation
BLOCK_ROWS = 4096  # rows per storage block (numpy), and per step of a batched exact query
EXACT_BELOW = 5_000  # below, an exact scan: cheap at that size (0.25 ms a reply at 1,000 rows) and exact
ROWS_PER_LIST = 128  # rows a list holds right after a partition (up to twice that before the next)
NPROBE = 24  # lists scanned per query, nearest first
# No re-partition past this many lists (reached at 131,072 rows): a re-partition's k-means and
# assignment grow with rows x lists, so the pauses would grow with the square of the run (about
# 1.6 s CPU at 80k rows, ~6 s at 160k). Past it the lists only grow; the scan budget keeps a
# query's cost bounded, and recall slowly falls as lists outgrow it.
MAX_LISTS = 1024
SCAN_BUDGET: int | None = 0  # rows a query scans at most (0: nprobe x rows_per_list; None: no bound)
KMEANS_ITERATIONS = 10
KMEANS_SAMPLE_PER_LIST = 32  # training rows per centroid: bounds the pause of a re-partition
KMEANS_SEED = 1234
EF_SEARCH = 128  # kept for callers of the earlier HNSW version; unused
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


_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LIST_MAPPING_BYTES = 64 * 1024  # allocations from this size up get their own mapping (see below)
_mappings_set = False


def _glibc() -> Any:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def put_large_blocks_in_own_mappings() -> bool:
    """Make glibc give every allocation of ``LIST_MAPPING_BYTES`` or more its own mapping
    (``mallopt(M_MMAP_THRESHOLD)``, once per process); False where not Linux/glibc.

    An IVF list is a growing vector of about 100-200 KB: each time it grows past its capacity it
    is copied into a block twice its size. In the heap those blocks reuse pages already resident,
    so the unused half counts in the process's memory (measured: RSS grew 1,177 B a node at 100k
    without this, 952 B with it, against 786 B stored). In a mapping of its own, pages are
    resident only once written, and a freed list goes back to the system at once. glibc's
    default threshold is 128 KB but rises up to 32 MB as large blocks are freed; fixing it at
    64 KB did not change the MiniLM embedder's CPU time (200-204 ms per 64 texts either way)."""
    global _mappings_set
    libc = _glibc()
    if libc is None:
        return False
    if not _mappings_set:
        _mappings_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, LIST_MAPPING_BYTES))
    return _mappings_set


def release_freed_heap() -> bool:
    """Give freed heap pages back to the system (glibc ``malloc_trim(0)``); False elsewhere.

    glibc keeps pages a program frees for later allocations; after a re-partition frees the old
    lists, they would stay resident. Guarded: only on Linux with glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class NearDuplicateIndex:
    """Accepted-node embeddings, queried for the highest cosine similarity."""

    def __init__(self, dim: int, threshold: float, exact_below: int | None = EXACT_BELOW,
                 ef_search: int = EF_SEARCH, *, nprobe: int = NPROBE, rows_per_list: int = ROWS_PER_LIST,
                 scan_budget: int | None = SCAN_BUDGET):
        """``exact_below=None``: always exact (no lists are built; for one-off checks such as
        ``treegen metrics``' contamination, where an exact answer matters more than a flat cost).
        ``ef_search`` is accepted for compatibility and unused."""
        if dim <= 0:
            raise ConfigError(f"Near-duplicate index dimension must be positive, got {dim}.")
        if not (0.0 < threshold <= 1.0):
            raise ConfigError(
                f"Near-duplicate threshold {threshold} is not a cosine similarity in (0, 1]; "
                "use e.g. 0.9 (higher rejects only closer paraphrases)."
            )
        if nprobe < 1 or rows_per_list < 1:
            raise ConfigError(f"nprobe ({nprobe}) and rows_per_list ({rows_per_list}) must be at least 1.")
        self.dim = dim
        self.threshold = float(threshold)
        self.exact_below = exact_below
        self.ef_search = int(ef_search)
        self.nprobe = int(nprobe)
        self.rows_per_list = int(rows_per_list)
        # rows a query scans at most (lists in order of nearness, stopping once past it): 0 means
        # nprobe x rows_per_list, None no bound. Lists grow up to twice rows_per_list between
        # partitions and unevenly; the bound keeps the work per query flat through that.
        self.scan_budget = scan_budget
        self._size = 0
        self._buffer: np.ndarray | None = None  # float32 (BLOCK_ROWS, dim), reused by batched queries
        self._faiss_mod = _faiss()
        self._codes: Any = None  # faiss: exact flat float16 storage, until the first partition
        self._ivf: Any = None  # faiss: the inverted file, from the first partition on
        self._pending: list[np.ndarray] = []  # faiss: float16 rows not yet stored
        self._blocks: list[np.ndarray] = []  # numpy: float16 (BLOCK_ROWS, dim), the last partly filled
        self.repartitions: list[tuple[int, int, float, float]] = []  # (rows, lists, CPU s, wall s) of each
        if self._faiss_mod is not None:
            self._codes = self._new_flat()

    def __len__(self) -> int:
        return self._size

    # ---- properties ------------------------------------------------------------------
    @property
    def backend(self) -> str:
        if self._faiss_mod is None:
            return "numpy-fp16"
        return "faiss-fp16" if self.exact_below is None else "faiss-ivf-fp16"

    @property
    def approximate(self) -> bool:
        """Whether a reply-sized query now goes through the lists (not an exact scan)."""
        first = self._first_partition()
        if first is None or self._size < first:
            return False
        last = first
        while last * 2 <= self._size:
            last *= 2
        return self._nlist(last) > self.nprobe

    @property
    def stored_bytes(self) -> int:
        """Bytes held for the rows: float16 codes, list ids, centroids, rows waiting."""
        if self._faiss_mod is None:
            return sum(b.nbytes for b in self._blocks)
        pending = sum(p.nbytes for p in self._pending)
        if self._ivf is None:
            return int(self._codes.ntotal * self._codes.code_size) + pending
        ivf = self._ivf
        return int(ivf.ntotal * (ivf.code_size + 8) + ivf.nlist * self.dim * 4) + pending

    # ---- the partition schedule --------------------------------------------------------
    def _first_partition(self) -> int | None:
        """Rows at which the first partition is made (None: never)."""
        if self._faiss_mod is None or self.exact_below is None:
            return None
        return max(self.exact_below, 2 * self.rows_per_list)

    def _next_partition(self) -> int | None:
        """Rows at which the next partition is due: the first, then each doubling."""
        first = self._first_partition()
        if first is None:
            return None
        at = first
        while at <= self._stored():
            at *= 2
        if self._ivf is not None and at // self.rows_per_list > MAX_LISTS:
            return None  # the lists stay as they are from here on
        return at

    def _nlist(self, rows: int) -> int:
        return min(MAX_LISTS, max(1, rows // self.rows_per_list))

    def _stored(self) -> int:
        return int(self._ivf.ntotal if self._ivf is not None else self._codes.ntotal)

    # ---- adding ------------------------------------------------------------------------
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
        """Add unit-norm rows (the embeddings of newly accepted nodes). Cheap: they are put into
        the lists at the next reply-sized query."""
        rows = self._as_rows(vectors)
        if rows.shape[0] == 0:
            return
        if self._faiss_mod is not None:
            self._pending.append(rows.astype(np.float16))
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

    def link_pending(self) -> None:
        """Store the rows waiting since the last query, re-partitioning at each doubling they
        cross (the next reply-sized query does it anyway; after a restore of many rows, call it
        in a worker thread rather than leave it to the first reply)."""
        if not self._pending or self._faiss_mod is None:
            return
        self._faiss_mod.omp_set_num_threads(1)  # this thread only; see the module's docstring
        pending, self._pending = self._pending, []  # taken first: rows added meanwhile wait for the next call
        rows = np.concatenate(pending) if len(pending) > 1 else pending[0]
        done = 0
        while done < rows.shape[0]:
            due = self._next_partition()
            take = rows.shape[0] - done if due is None else min(rows.shape[0] - done, due - self._stored())
            part = rows[done : done + take].astype(np.float32)
            if self._ivf is None:
                self._codes.add(part)
            else:
                start = self._stored()
                self._ivf.add_with_ids(part, np.arange(start, start + take, dtype=np.int64))
            done += take
            if due is not None and self._stored() == due:
                self._repartition()

    def _repartition(self) -> None:
        """New lists for all stored rows: spherical k-means on a fixed-seed sample of them, each
        row into its nearest centroid's list; the old lists are freed."""
        began, began_wall = time.process_time(), time.perf_counter()
        n = self._stored()
        put_large_blocks_in_own_mappings()  # before the lists are allocated
        ivf = self._kmeans_partition(n)
        self._ivf, self._codes = ivf, None
        release_freed_heap()
        self.repartitions.append((n, int(ivf.nlist), time.process_time() - began, time.perf_counter() - began_wall))

    def _new_ivf(self, centroids: np.ndarray) -> Any:
        faiss = self._faiss_mod
        quantizer = faiss.IndexFlatIP(self.dim)
        quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
        ivf = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, len(centroids), faiss.ScalarQuantizer.QT_fp16,
                                            faiss.METRIC_INNER_PRODUCT, False)  # rows, not residuals
        ivf.is_trained = True  # float16 codes need no training; the quantizer is given its centroids
        return ivf

    def _kmeans_partition(self, n: int) -> Any:
        faiss = self._faiss_mod
        nlist = self._nlist(n)
        sample_ids = np.sort(np.random.default_rng(KMEANS_SEED).choice(
            n, size=min(n, nlist * KMEANS_SAMPLE_PER_LIST), replace=False))
        sample = np.empty((len(sample_ids), self.dim), dtype=np.float32)
        for ids, rows in self._stored_rows():
            hit = np.isin(ids, sample_ids, assume_unique=True)
            if hit.any():
                sample[np.searchsorted(sample_ids, ids[hit])] = rows[hit]
        if nlist > 1:
            kmeans = faiss.Kmeans(self.dim, nlist, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED, spherical=True,
                                  max_points_per_centroid=KMEANS_SAMPLE_PER_LIST + 1, min_points_per_centroid=1,
                                  verbose=False)
            kmeans.train(sample)
            centroids = kmeans.centroids
        else:
            centroids = sample.mean(axis=0, keepdims=True)
        ivf = self._new_ivf(centroids)
        for ids, rows in self._stored_rows():
            ivf.add_with_ids(np.ascontiguousarray(rows), ids)
        return ivf

    def _stored_rows(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 rows) of the stored rows, in blocks of at most about BLOCK_ROWS."""
        if self._ivf is None:
            n = int(self._codes.ntotal)
            for start in range(0, n, BLOCK_ROWS):
                m = min(BLOCK_ROWS, n - start)
                yield np.arange(start, start + m, dtype=np.int64), self._codes.reconstruct_n(start, m)
            return
        invlists = self._faiss_mod.downcast_InvertedLists(self._ivf.invlists)
        ids_out: list[np.ndarray] = []
        codes_out: list[np.ndarray] = []
        held = 0
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size == 0:
                continue
            ids_out.append(self._faiss_mod.rev_swig_ptr(invlists.get_ids(lst), size).copy())
            codes_out.append(self._faiss_mod.rev_swig_ptr(invlists.get_codes(lst), size * self._ivf.code_size)
                             .copy().view(np.float16).reshape(size, self.dim))
            held += size
            if held >= BLOCK_ROWS or lst == invlists.nlist - 1:
                yield np.concatenate(ids_out), np.concatenate(codes_out).astype(np.float32)
                ids_out, codes_out, held = [], [], 0
        if ids_out:
            yield np.concatenate(ids_out), np.concatenate(codes_out).astype(np.float32)

    # ---- querying ----------------------------------------------------------------------
    def max_similarity(self, vectors: np.ndarray) -> np.ndarray:
        """Per query row, the highest cosine similarity to anything added (-inf when empty).

        Exact (over the float16 rows) below ``exact_below`` rows and for more than 64 query
        rows; otherwise from the IVF, which may miss the nearest row (never overstates)."""
        queries = self._as_rows(vectors)
        best = np.full(queries.shape[0], -np.inf, dtype=np.float32)
        if self._size == 0 or queries.shape[0] == 0:
            return best
        if self._faiss_mod is None or queries.shape[0] > _BATCH_QUERIES:
            return self._exact_batched(queries, best)
        self.link_pending()
        queries = np.ascontiguousarray(queries)
        if self._ivf is not None:
            budget = self.nprobe * self.rows_per_list if self.scan_budget == 0 else (self.scan_budget or 0)
            params = self._faiss_mod.SearchParametersIVF(nprobe=self.nprobe, max_codes=budget)
            sims, ids = self._ivf.search(queries, 1, params=params)
        else:
            sims, ids = self._codes.search(queries, 1)
        return np.where(ids[:, 0] >= 0, sims[:, 0], best).astype(np.float32)  # -inf: nothing in the probed lists

    def _exact_batched(self, queries: np.ndarray, best: np.ndarray) -> np.ndarray:
        if self._faiss_mod is None:
            if self._buffer is None:
                self._buffer = np.empty((BLOCK_ROWS, self.dim), dtype=np.float32)
            for start in range(0, self._size, BLOCK_ROWS):
                n = min(BLOCK_ROWS, self._size - start)
                wide = self._buffer[:n]
                np.copyto(wide, self._blocks[start // BLOCK_ROWS][:n], casting="same_kind")
                np.maximum(best, (queries @ wide.T).max(axis=1), out=best)
            return best
        for _, rows in self._stored_rows():
            np.maximum(best, (queries @ rows.T).max(axis=1), out=best)
        for chunk in self._pending:
            for start in range(0, chunk.shape[0], BLOCK_ROWS):
                part = chunk[start : start + BLOCK_ROWS].astype(np.float32)
                np.maximum(best, (queries @ part.T).max(axis=1), out=best)
        return best

    def is_near_duplicate(self, vector: np.ndarray) -> tuple[bool, float]:
        """(similarity >= threshold, that similarity) for one vector; (False, -inf) when empty."""
        sim = float(self.max_similarity(vector)[0])
        return sim >= self.threshold, sim

    def _new_flat(self) -> Any:
        faiss = self._faiss_mod
        return faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)

