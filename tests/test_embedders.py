"""The embedders' worker thread, its batching, and the strategies' use of carried vectors."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from treegen.embedders import EmbedWorker, embed_threads, get_embedder
from treegen.errors import ConfigError
from treegen.strategies import make_strategy
from treegen.strategies.base import Job, NodeInfo, StrategyParams
from treegen.task import Example


def _rows(texts):
    """A stand-in model: one row per text, its length and its first letter's code."""
    return np.array([[len(t), ord(t[0])] for t in texts], dtype=np.float32)


def test_worker_embeds_calls_that_queued_while_it_ran_in_one_pass_and_splits_the_rows():
    release = threading.Event()
    passes: list[list[str]] = []

    def slow_embed(texts):
        passes.append(list(texts))
        if len(passes) == 1:
            assert release.wait(10)
        return _rows(texts)

    worker = EmbedWorker(slow_embed, name="test-worker")
    first = worker.submit(["a"])
    while not passes:  # the worker is inside its first pass
        threading.Event().wait(0.001)
    queued = [worker.submit(["bb", "ccc"]), worker.submit(["dddd"]), worker.submit(["e", "ff"])]
    release.set()
    assert first.result(10).tolist() == [[1, ord("a")]]
    assert [f.result(10).tolist() for f in queued] == [
        [[2, ord("b")], [3, ord("c")]], [[4, ord("d")]], [[1, ord("e")], [2, ord("f")]]]
    assert passes == [["a"], ["bb", "ccc", "dddd", "e", "ff"]]  # three calls, one pass
    assert worker.passes == 2 and worker.texts == 6


def test_worker_pass_is_capped_at_max_texts():
    release = threading.Event()
    sizes: list[int] = []

    def embed(texts):
        sizes.append(len(texts))
        if len(sizes) == 1:
            assert release.wait(10)
        return _rows(texts)

    worker = EmbedWorker(embed, name="test-worker", max_texts=4)
    first = worker.submit(["x"])
    while not sizes:
        threading.Event().wait(0.001)
    rest = [worker.submit(["ab", "cd", "ef"]) for _ in range(3)]
    release.set()
    first.result(10)
    assert [f.result(10).shape for f in rest] == [(3, 2)] * 3
    # a pass stops taking calls once it holds max_texts: 3 + 3 >= 4, then the last 3 alone
    assert sizes == [1, 6, 3]


def test_worker_failure_reaches_every_caller_of_the_pass_and_the_worker_lives_on():
    calls = []

    def flaky(texts):
        calls.append(list(texts))
        if len(calls) == 1:
            raise RuntimeError("model crashed")
        return _rows(texts)

    worker = EmbedWorker(flaky, name="test-worker")
    with pytest.raises(RuntimeError, match="model crashed"):
        worker.submit(["a"]).result(10)
    assert worker.submit(["bb"]).result(10).tolist() == [[2, ord("b")]]


def test_worker_setup_failure_is_every_callers_error():
    def setup():
        raise OSError("weights not found")

    worker = EmbedWorker(_rows, name="test-worker", setup=setup)
    for _ in range(2):
        with pytest.raises(OSError, match="weights not found"):
            worker.submit(["a"]).result(10)


def test_worker_skips_cancelled_calls():
    release = threading.Event()
    passes: list[list[str]] = []

    def embed(texts):
        passes.append(list(texts))
        if len(passes) == 1:
            assert release.wait(10)
        return _rows(texts)

    worker = EmbedWorker(embed, name="test-worker")
    first = worker.submit(["a"])
    while not passes:
        threading.Event().wait(0.001)
    dropped = worker.submit(["gone"])
    kept = worker.submit(["kept"])
    assert dropped.cancel()
    release.set()
    first.result(10)
    assert kept.result(10).tolist() == [[4, ord("k")]]
    assert passes == [["a"], ["kept"]]


def test_embed_threads_default_env_and_bad_values(monkeypatch):
    monkeypatch.delenv("TREEGEN_EMBED_THREADS", raising=False)
    assert embed_threads() == 1
    monkeypatch.setenv("TREEGEN_EMBED_THREADS", "2")
    assert embed_threads() == 2
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("TREEGEN_EMBED_THREADS", bad)
        with pytest.raises(ConfigError, match="TREEGEN_EMBED_THREADS"):
            embed_threads()


def test_minilm_runs_on_its_worker_with_one_torch_thread_and_batches_concurrent_calls(strategyqa_pool):
    import concurrent.futures

    import torch

    from treegen.task import load_examples

    examples, _ = load_examples(strategyqa_pool)
    texts = [e.text() for e in examples[:30]]
    emb = get_embedder("minilm")
    main_threads = torch.get_num_threads()
    alone = emb.embed(texts[:10])
    seen: list[tuple[str, int]] = []
    real = emb._embed  # type: ignore[attr-defined]

    def spying(batch):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(batch)

    emb.worker._embed_fn = spying  # type: ignore[attr-defined]
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            results = list(pool.map(emb.embed, [texts[:10], texts[10:20], texts[20:30]]))
    finally:
        emb.worker._embed_fn = real  # type: ignore[attr-defined]
    assert all(name == "treegen-minilm" and threads == 1 for name, threads in seen)
    assert 1 <= len(seen) <= 3
    assert torch.get_num_threads() == main_threads  # the worker's setting is its own
    assert [r.shape for r in results] == [(10, 384)] * 3
    np.testing.assert_allclose(np.linalg.norm(results[1], axis=1), 1.0, atol=1e-5)
    # in a batch with other texts the rows move by float rounding only
    np.testing.assert_allclose(results[0], alone, rtol=0, atol=1e-5)


# ---- the chain strategies decide from the vectors the nodes carry

def _node(i: int, vec: list[float] | None, depth: int = 1) -> NodeInfo:
    v = None if vec is None else np.asarray(vec, dtype=np.float32) / np.linalg.norm(vec)
    return NodeInfo(i, depth, 0, Example(question=f"q{i}", options=["True", "False"], label=True), vector=v)


@pytest.mark.parametrize("name,picked", [("contrastive", 3), ("similar", 2)])
def test_chain_picks_from_carried_vectors_without_embedding(name, picked):
    def never(parent, children):
        raise AssertionError("embedded on the event loop")

    s = make_strategy(name, StrategyParams(chains=1, similarity=never))
    parent = _node(1, [1.0, 0.0])
    children = [_node(2, [0.9, 0.1]), _node(3, [0.0, 1.0]), _node(4, [0.5, 0.5])]
    assert s.pick(parent, children, random.Random(0)).id == picked


def test_chain_falls_back_to_the_callback_when_a_vector_is_missing():
    asked = []

    def sim(parent, children):
        asked.append((parent.question, [c.question for c in children]))
        return np.array([0.2, 0.9])

    s = make_strategy("contrastive", StrategyParams(chains=1, similarity=sim))
    parent = _node(1, None, depth=0)
    children = [_node(2, [1.0, 0.0]), _node(3, [0.0, 1.0])]
    assert s.pick(parent, children, random.Random(0)).id == 2
    assert asked == [("q1", ["q2", "q3"])]


@pytest.mark.parametrize("name", ["contrastive", "similar"])
def test_comparing_chains_want_vectors_only_when_there_is_a_choice(name):
    s = make_strategy(name, StrategyParams(chains=1))
    job = Job([_node(1, None, depth=0)], depth=1, chain=0)
    assert [s.wants_vectors(job, n) for n in (0, 1, 2, 5)] == [False, False, True, True]


@pytest.mark.parametrize("name", ["random", "tree", "novelty", "naive"])
def test_other_strategies_never_want_vectors(name):
    s = make_strategy(name, StrategyParams(chains=1))
    job = Job([_node(1, None, depth=0)], depth=1, chain=0)
    assert not s.uses_embeddings
    assert not any(s.wants_vectors(job, n) for n in (0, 1, 5))


# ---- the engine: vectors off the event loop, each node embedded once

@pytest.mark.parametrize("strategy", ["contrastive", "similar"])
def test_comparing_chains_embed_off_the_loop_each_node_once_and_reproducibly(tmp_path, yesno_seeds, monkeypatch,
                                                                             strategy):
    import collections

    import treegen
    from treegen.embedders import HashingEmbedder

    embedded: collections.Counter[str] = collections.Counter()
    threads: set[str] = set()
    real = HashingEmbedder.embed

    def spying(self, texts):
        threads.add(threading.current_thread().name)
        embedded.update(texts)
        return real(self, texts)

    monkeypatch.setattr(HashingEmbedder, "embed", spying)
    exports = {}
    for c in (1, 8):
        embedded.clear()
        result = treegen.run(yesno_seeds, backend="sim", strategy=strategy, target=30, max_usd=1, concurrency=c,
                             chains=4, out=tmp_path, name=f"{strategy}-c{c}", embedder="hashing", seed=5,
                             sim_latency_ms=5)
        assert result.status == "completed" and result.accepted == 30
        examples = treegen.open_run(result.run_dir).examples()
        exports[c] = [(e.question, e.label) for e in examples]
        if c == 1:
            # Every accepted example is embedded at most once (as a candidate; its vector is then
            # carried to the steps that show it as the parent), and some comparisons happened.
            assert max(embedded[e.text()] for e in examples) == 1
            assert sum(embedded[e.text()] for e in examples) >= 10
    assert threading.main_thread().name not in threads  # never on the event loop's thread
    assert exports[1] == exports[8]


def test_minilm_embeds_each_distinct_text_of_a_pass_once(strategyqa_pool):
    from treegen.task import load_examples

    examples, _ = load_examples(strategyqa_pool)
    a, b = examples[0].text(), examples[1].text()
    emb = get_embedder("minilm")
    inner: list[list[str]] = []
    real = emb._embed  # type: ignore[attr-defined]

    def spying(texts):
        inner.append(list(texts))
        return real(texts)

    emb._embed = spying  # type: ignore[attr-defined]  # the worker calls the class's; the dedup recurses here
    try:
        rows = emb.embed([a, b, a, a, b])
    finally:
        del emb._embed  # type: ignore[attr-defined]
    assert inner == [[a, b]]  # five rows, two texts through the model
    np.testing.assert_array_equal(rows[0], rows[2])
    np.testing.assert_array_equal(rows[1], rows[4])
    np.testing.assert_allclose(rows[:2], emb.embed([a, b]), rtol=0, atol=1e-5)
