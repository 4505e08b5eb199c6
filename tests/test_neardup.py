"""The in-loop near-duplicate index: exact against brute force, growth, thresholds, real texts."""

from __future__ import annotations

import numpy as np
import pytest

from treegen.embedders import get_embedder
from treegen.errors import ConfigError
from treegen import neardup
from treegen.neardup import BLOCK_ROWS, FLOAT16_ERROR, NearDuplicateIndex


@pytest.fixture(params=["faiss", "numpy"])
def backend(request, monkeypatch):
    """Each test of the index runs on both storages: faiss's IVF over float16 and numpy's blocks."""
    if request.param == "faiss":
        pytest.importorskip("faiss")
    monkeypatch.setattr(neardup, "_USE_FAISS", request.param == "faiss")
    return request.param


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_max_similarity_matches_brute_force_across_growth(backend):
    rng = np.random.default_rng(0)
    stored = _unit_rows(rng, 1000, 24)
    index = NearDuplicateIndex(24, 0.9)
    assert index.backend.startswith(backend)
    queries = _unit_rows(rng, 50, 24)
    rounded = stored.astype(np.float16).astype(np.float32)
    for start in range(0, 1000, 37):
        index.add(stored[start : start + 37])
        if start % 185 == 0:  # queries between adds: rows waiting for the graph are found too
            end = start + 37
            np.testing.assert_allclose(index.max_similarity(queries[:5]),
                                       (queries[:5] @ rounded[:end].T).max(axis=1), rtol=0, atol=1e-6)
    assert len(index) == 1000 and not index.approximate
    expected = (queries @ stored.T).max(axis=1)
    # Stored as float16: within the rounding bound of float32, never further.
    got = index.max_similarity(queries)
    np.testing.assert_allclose(got, expected, rtol=0, atol=FLOAT16_ERROR)
    # and the same as an exact scan of the float16-rounded rows
    np.testing.assert_allclose(got, (queries @ rounded.T).max(axis=1), rtol=0, atol=1e-6)
    # a large batch (the metrics' path, block by block through BLAS) gives the same answers
    many = _unit_rows(rng, 300, 24)
    np.testing.assert_allclose(index.max_similarity(many), (many @ rounded.T).max(axis=1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(index.max_similarity(many[:50]), index.max_similarity(many)[:50], rtol=0, atol=1e-6)


def test_blocks_fill_across_boundaries_and_memory_stays_under_1kb_a_node(backend):
    rng = np.random.default_rng(1)
    dim = 384
    n = 2 * BLOCK_ROWS + 123  # numpy: three blocks, the last partly filled
    stored = _unit_rows(rng, n, dim)
    index = NearDuplicateIndex(dim, 0.9)
    index.add(stored[:5])
    index.add(stored[5 : BLOCK_ROWS + 7])  # one add that crosses a block boundary
    index.add(stored[BLOCK_ROWS + 7 :])
    assert len(index) == n
    # A query equal to a stored row anywhere finds itself (the row's float16 copy).
    picks = [0, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 6, n - 1]
    batched = index.max_similarity(np.repeat(stored[picks], 20, axis=0))  # > 64 rows: the block path
    assert np.all(np.abs(batched - 1.0) <= FLOAT16_ERROR)
    sims = index.max_similarity(stored[picks])
    assert np.all(np.abs(sims - 1.0) <= FLOAT16_ERROR)
    if backend == "faiss":
        # 768 B of float16 codes a MiniLM-sized node, its list id and the centroids: under 1 KB (goal 4)
        assert index.repartitions and n * dim * 2 < index.stored_bytes <= n * 1000
    else:
        # 2 bytes a coordinate, plus at most one block's unused rows (np.zeros pages are only
        # mapped when written)
        assert index.stored_bytes == 3 * BLOCK_ROWS * dim * 2


def _planted(rng: np.random.Generator, n: int, dim: int, queries: int):
    """Stored rows, and queries: near-duplicates of stored rows at cosines 0.86-0.99 around the
    thresholds, and unrelated rows."""
    stored = _unit_rows(rng, n, dim)
    origin = rng.choice(n, queries // 2, replace=False)
    noise = _unit_rows(rng, queries // 2, dim)
    noise -= (noise * stored[origin]).sum(axis=1, keepdims=True) * stored[origin]  # orthogonal to the origin
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    cos = rng.uniform(0.86, 0.99, size=(queries // 2, 1)).astype(np.float32)
    near = cos * stored[origin] + np.sqrt(1 - cos**2) * noise
    return stored, np.vstack([near, _unit_rows(rng, queries - queries // 2, dim)]).astype(np.float32)


def _grown(stored: np.ndarray, chunk: int, query_every: int = 0, probe: np.ndarray | None = None, **kwargs):
    index = NearDuplicateIndex(stored.shape[1], 0.9, **kwargs)
    for i, s in enumerate(range(0, len(stored), chunk)):
        index.add(stored[s : s + chunk])
        if query_every and i % query_every == 0:
            assert probe is not None
            index.max_similarity(probe)  # stores what is waiting (and re-partitions) at different points
    return index


def _replies(index: NearDuplicateIndex, queries: np.ndarray) -> np.ndarray:
    return np.concatenate([index.max_similarity(queries[s : s + 10]) for s in range(0, len(queries), 10)])


def test_ivf_decisions_equal_exact_on_a_planted_set():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    stored, queries = _planted(rng, 3000, 64, 400)
    # first partition at 1,000 rows, then 2,000: 62 and then 125 lists of 16-32 rows, the nearest
    # 32 probed up to 512 rows (random rows in 64 dimensions have no clusters: harder for lists
    # than real embeddings)
    index = _grown(stored, 7, exact_below=1000, rows_per_list=16, nprobe=32)
    index.link_pending()  # the rows into the lists now (else at the first query)
    assert index.approximate and [n for n, *_ in index.repartitions] == [1000, 2000]
    got = _replies(index, queries)
    exact = (queries @ stored.astype(np.float16).astype(np.float32).T).max(axis=1)
    assert (exact >= 0.9).sum() > 100 and (exact >= 0.95).sum() > 40  # the threshold region is populated
    for threshold in (0.9, 0.95):
        assert np.array_equal(got >= threshold, exact >= threshold)
    # The lists return similarities of rows they hold: never above the exact maximum.
    assert np.all(got <= exact + 1e-6)
    # and the planted near-duplicates' values themselves are exact (novelty = 1 - max sim)
    np.testing.assert_allclose(got[:200], exact[:200], rtol=0, atol=1e-6)
    # an unrelated query is answered from the lists probed, not the whole index: here it misses
    assert (got[200:] < exact[200:] - 1e-6).any()


def test_repartitions_keep_every_row_findable():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    stored = _unit_rows(rng, 2100, 32)
    index = _grown(stored, 50, exact_below=0, rows_per_list=16, nprobe=4)
    index.link_pending()
    # partitions at 32, 64, ..., 2048 rows, each a fresh k-means of all rows stored
    assert [n for n, *_ in index.repartitions] == [32 * 2**j for j in range(7)]
    assert index.repartitions[-1][1] > 100 and index.approximate
    rounded = stored.astype(np.float16).astype(np.float32)
    # each row, asked for itself, is found: it is stored once, in a list near it
    itself = _replies(index, stored)
    np.testing.assert_allclose(itself, (stored * rounded).sum(axis=1), rtol=0, atol=1e-6)
    # probing every list is an exact scan: no row lost, none stored twice with another value
    index.nprobe, index.scan_budget = 10_000, None
    queries = _unit_rows(rng, 100, 32)
    np.testing.assert_allclose(_replies(index, queries), (queries @ rounded.T).max(axis=1), rtol=0, atol=1e-6)
    assert 2100 * 32 * 2 < index.stored_bytes <= 2100 * (32 * 2 + 8) + index.repartitions[-1][1] * 32 * 4


def test_no_repartition_past_the_list_cap_and_rows_still_findable(monkeypatch):
    # A re-partition's cost grows with rows x lists: past MAX_LISTS the lists only grow.
    pytest.importorskip("faiss")
    monkeypatch.setattr(neardup, "MAX_LISTS", 8)
    rng = np.random.default_rng(11)
    stored = _unit_rows(rng, 2100, 32)
    index = _grown(stored, 50, exact_below=0, rows_per_list=16, nprobe=4)
    index.link_pending()
    assert [(n, lists) for n, lists, *_ in index.repartitions] == [(32, 2), (64, 4), (128, 8)]
    assert len(index) == 2100
    rounded = stored.astype(np.float16).astype(np.float32)
    index.nprobe, index.scan_budget = 10_000, None  # every list: an exact scan of all 2,100 rows
    queries = _unit_rows(rng, 100, 32)
    np.testing.assert_allclose(_replies(index, queries), (queries @ rounded.T).max(axis=1), rtol=0, atol=1e-6)


def test_scan_budget_bounds_the_rows_a_query_scans():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(9)
    stored = _unit_rows(rng, 1100, 16)
    index = _grown(stored, 100, exact_below=0, rows_per_list=8, nprobe=1000, scan_budget=40)
    index.link_pending()
    queries = _unit_rows(rng, 10, 16)
    stats = faiss.cvar.indexIVF_stats
    stats.reset()
    index.max_similarity(queries)
    longest = max(index._ivf.invlists.list_size(i) for i in range(index._ivf.nlist))
    # lists are scanned whole, nearest first, until 40 rows are passed: not all 1,100 rows
    assert 10 * 40 <= stats.ndis <= 10 * (40 + longest) < 10 * 1100
    index.scan_budget = None  # no bound: every probed list (here all of them)
    stats.reset()
    index.max_similarity(queries)
    assert stats.ndis == 10 * 1100


def test_same_rows_in_the_same_order_give_the_same_answers_however_batched():
    pytest.importorskip("faiss")
    import threading

    rng = np.random.default_rng(3)
    stored, queries = _planted(rng, 1500, 64, 200)
    settings = dict(exact_below=0, rows_per_list=16, nprobe=3)  # lists from 32 rows; 5 re-partitions

    def run(chunk: int, query_every: int, in_thread: bool) -> np.ndarray:
        index = _grown(stored, chunk, query_every, queries[:3], **settings)
        assert index.approximate and len(index.repartitions) == 6
        out: list[np.ndarray] = []
        ask = lambda: out.append(_replies(index, queries))  # noqa: E731
        if in_thread:  # as the engine does: from a worker thread
            t = threading.Thread(target=ask)
            t.start()
            t.join()
        else:
            ask()
        return out[0]

    first = run(1, 1, False)
    assert np.array_equal(first, run(1, 1, False))
    assert np.array_equal(first, run(13, 5, True))
    assert np.array_equal(first, run(1500, 1, False))
    assert np.array_equal(first, run(700, 1, False))  # one add crossing two partition points
    exact = (queries @ stored.astype(np.float16).astype(np.float32).T).max(axis=1)
    assert not np.array_equal(first, exact)  # approximate: the test could see a batching effect


def test_exact_below_the_first_partition():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    stored, queries = _planted(rng, 999, 32, 100)
    index = _grown(stored, 9, exact_below=1000, rows_per_list=16, nprobe=1)
    assert not index.approximate and index.repartitions == []
    rounded = stored.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(_replies(index, queries), (queries @ rounded.T).max(axis=1), rtol=0, atol=1e-6)
    index.add(stored[:1])  # the 1,000th row: the first partition, at the next query
    assert index.approximate
    _replies(index, queries)
    assert [n for n, *_ in index.repartitions] == [1000]


def test_without_faiss_the_index_is_exact_numpy(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    rng = np.random.default_rng(8)
    stored, queries = _planted(rng, 1200, 16, 40)
    index = _grown(stored, 100, exact_below=0, rows_per_list=16, nprobe=1)
    assert index.backend == "numpy-fp16" and not index.approximate and index.repartitions == []
    rounded = stored.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(_replies(index, queries), (queries @ rounded.T).max(axis=1), rtol=0, atol=1e-6)


def test_large_batches_are_exact_in_ivf_mode():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    stored, queries = _planted(rng, 1200, 32, 200)
    index = NearDuplicateIndex(32, 0.9, exact_below=0, rows_per_list=16, nprobe=1)
    index.add(stored[:1000])
    index.max_similarity(queries[:2])  # the first 1000 rows into the lists
    index.add(stored[1000:])  # the rest waiting
    exact = (queries @ stored.astype(np.float16).astype(np.float32).T).max(axis=1)
    np.testing.assert_allclose(index.max_similarity(queries), exact, rtol=0, atol=1e-6)
    before = index.stored_bytes
    index.link_pending()  # as after a restore: the waiting rows into the lists
    assert index.stored_bytes > before  # the same float16 rows, now with their list ids
    np.testing.assert_allclose(index.max_similarity(queries), exact, rtol=0, atol=1e-6)


def test_always_exact_index_builds_no_graph(backend):
    rng = np.random.default_rng(5)
    stored, queries = _planted(rng, 800, 48, 40)
    index = NearDuplicateIndex(48, 0.9, exact_below=None)  # as a one-off check would use it
    index.add(stored[:500])
    index.add(stored[500:])
    assert not index.approximate
    assert index.backend == ("faiss-fp16" if backend == "faiss" else "numpy-fp16")
    if backend == "faiss":
        index.max_similarity(queries[:1])
        assert index.stored_bytes == 800 * 48 * 2 and not index.repartitions  # codes only: no lists
    exact = (queries @ stored.astype(np.float16).astype(np.float32).T).max(axis=1)
    np.testing.assert_allclose(index.max_similarity(queries), exact, rtol=0, atol=1e-6)


def test_is_near_duplicate_uses_threshold(backend):
    index = NearDuplicateIndex(3, 0.9)
    assert index.is_near_duplicate(np.array([1.0, 0.0, 0.0])) == (False, float("-inf"))  # empty index
    index.add(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    near, sim = index.is_near_duplicate(np.array([1.0, 0.0, 0.0]))
    assert near and sim == pytest.approx(1.0)
    close = np.array([0.95, np.sqrt(1 - 0.95**2), 0.0])  # cosine 0.95 with the first row
    assert index.is_near_duplicate(close)[0]
    far = np.array([0.8, 0.0, 0.6])  # cosine 0.8
    near, sim = index.is_near_duplicate(far)
    assert not near and sim == pytest.approx(0.8)


def test_bad_dimension_and_threshold_are_config_errors():
    with pytest.raises(ConfigError, match="threshold"):
        NearDuplicateIndex(8, 1.5)
    with pytest.raises(ConfigError, match="threshold"):
        NearDuplicateIndex(8, 0.0)
    index = NearDuplicateIndex(8, 0.9)
    with pytest.raises(ConfigError, match="dimension 8"):
        index.add(np.ones((2, 4), dtype=np.float32))


def test_real_paraphrase_is_caught_and_other_question_is_not(strategyqa_pool, backend):
    from treegen.task import load_examples

    examples, _ = load_examples(strategyqa_pool)
    emb = get_embedder("hashing")
    accepted = [e.question for e in examples[:200]]
    index = NearDuplicateIndex(emb.dim, 0.8)
    index.add(emb.embed(accepted))
    copy_with_typo_case = accepted[10].upper()  # the lexical embedder lower-cases: identical
    reworded = accepted[20].rstrip("?") + " at all?"
    unrelated = examples[500].question
    sims = index.max_similarity(emb.embed([copy_with_typo_case, reworded, unrelated]))
    assert sims[0] == pytest.approx(1.0, abs=FLOAT16_ERROR)
    assert sims[1] >= 0.8
    assert sims[2] < 0.8


def _embed_concurrently(emb, groups, window=0.003):
    import asyncio

    from treegen.embedders import embed_async

    calls = []
    real_embed = emb.embed

    def counting_embed(texts):
        calls.append(len(texts))
        return real_embed(texts)

    async def main():
        emb.embed = counting_embed
        try:
            return await asyncio.gather(*(embed_async(emb, g, window=window) for g in groups))
        finally:
            del emb.embed  # back to the class's method

    return asyncio.run(main()), calls


@pytest.mark.parametrize("name", ["hashing", "minilm"])
def test_embed_async_batches_concurrent_callers_and_gives_the_synchronous_rows(name, strategyqa_pool):
    from treegen.task import load_examples

    examples, _ = load_examples(strategyqa_pool)
    texts = [e.text() for e in examples[:40]]
    groups = [texts[0:5], texts[5:6], texts[6:20], texts[20:40]]
    emb = get_embedder(name)
    results, calls = _embed_concurrently(emb, groups)
    assert calls == [40]  # four callers, one forward pass
    for group, rows in zip(groups, results):
        expected = emb.embed(group)
        assert rows.shape == expected.shape
        # MiniLM pads a batch to its longest text: the masked padding changes rows only by rounding.
        np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-5 if name == "minilm" else 0)


def test_embed_async_is_off_the_loop_and_errors_reach_every_caller():
    import asyncio
    import threading

    from treegen.embedders import embed_async

    seen_threads = []

    class Broken:
        name, dim = "broken", 3

        def embed(self, texts):
            seen_threads.append(threading.current_thread())
            raise RuntimeError("model crashed")

    async def main():
        return await asyncio.gather(embed_async(Broken(), ["a"]), embed_async(Broken(), ["b"]),
                                    return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [str(o) for o in outcomes] == ["model crashed", "model crashed"]
    assert seen_threads and all(t is not threading.main_thread() for t in seen_threads)
