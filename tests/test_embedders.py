"""The embedders' worker thread, its batching, and the strategies' use of carried vectors."""

from __future__ import annotations

import os
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


def test_two_workers_run_passes_side_by_side_after_one_setup():
    setups: list[str] = []
    both_in = threading.Barrier(2, timeout=10)  # passes wait here until two run at once
    threads_seen: set[str] = set()

    def setup():
        setups.append(threading.current_thread().name)
        threading.Event().wait(0.05)  # the second thread must not embed before setup ends

    def embed(texts):
        assert setups, "a pass ran before the setup"
        threads_seen.add(threading.current_thread().name)
        both_in.wait()
        return _rows(texts)

    worker = EmbedWorker(embed, name="test-worker", setup=setup, workers=2)
    first = worker.submit(["a"])
    while not both_in.n_waiting:  # one pass is inside embed: the next goes to the other thread
        threading.Event().wait(0.001)
    second = worker.submit(["bb"])
    assert first.result(10).tolist() == [[1, ord("a")]] and second.result(10).tolist() == [[2, ord("b")]]
    assert setups == ["test-worker"] and threads_seen == {"test-worker", "test-worker-1"}
    assert worker.passes == 2 and worker.texts == 2


def test_embed_workers_reads_the_environment(monkeypatch):
    from treegen.embedders import embed_workers

    monkeypatch.setenv("TREEGEN_EMBED_WORKERS", "3")
    assert embed_workers() == 3
    for bad in ("0", "many", "65"):
        monkeypatch.setenv("TREEGEN_EMBED_WORKERS", bad)
        with pytest.raises(ConfigError, match="TREEGEN_EMBED_WORKERS"):
            embed_workers()
    monkeypatch.delenv("TREEGEN_EMBED_WORKERS")
    assert embed_workers() == min(2, os.cpu_count() or 1)


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
    assert all(name.startswith("treegen-minilm") for name, _ in seen)  # its worker threads
    if emb.backend == "torch":  # onnxruntime's threads are its session's (intra_op_num_threads=1)
        assert all(threads == 1 for _, threads in seen)
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


# ---- MiniLM backends: the packed graph in onnxruntime and in torch, and the export's cache

from treegen import embedders as emb_mod  # noqa: E402


def test_packed_inputs_map_each_token_to_its_padded_slot_and_back():
    ids = [[101, 7, 8, 102], [101, 102], [101, 5, 102]]
    feeds = emb_mod.pack_token_ids(ids)
    tokens = feeds["input_ids"]
    assert tokens.tolist() == [101, 7, 8, 102, 101, 102, 101, 5, 102]
    assert feeds["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2]
    padded = np.append(tokens, -1)[feeds["gather_index"]].reshape(3, 4)  # -1: the zero row
    assert padded.tolist() == [[101, 7, 8, 102], [101, 102, -1, -1], [101, 5, 102, -1]]
    assert padded.reshape(-1)[feeds["scatter_index"]].tolist() == tokens.tolist()
    assert (feeds["key_bias"] < -1e29).tolist() == (padded == -1).tolist()
    assert feeds["lengths"].ravel().tolist() == [4, 2, 3]


def test_minilm_backend_setting(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    for raw, want in (("", "auto"), ("onnx", "onnx"), (" Torch ", "torch"), ("auto", "auto")):
        monkeypatch.setenv("TREEGEN_MINILM_BACKEND", raw)
        assert emb_mod.minilm_backend() == want
    monkeypatch.setenv("TREEGEN_MINILM_BACKEND", "cuda")
    with pytest.raises(ConfigError, match="TREEGEN_MINILM_BACKEND"):
        emb_mod.minilm_backend()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    monkeypatch.delenv("TREEGEN_MINILM_BACKEND")
    assert emb_mod.minilm_backend() == "torch"  # auto without onnxruntime
    monkeypatch.setenv("TREEGEN_MINILM_BACKEND", "onnx")
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        emb_mod.minilm_backend()
    with pytest.raises(ConfigError, match="Choose one of: auto, onnx, torch"):
        emb_mod.MiniLMEmbedder(backend="gpu")


def _transformers_vectors(texts):
    """The pre-session-5 MiniLM path: transformers' BertModel, padded, mean pooled, L2 norm."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = emb_mod.minilm_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    model.eval()
    with torch.inference_mode():
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A private cache with one real export in it: (cache folder, graph file, what the export
    returned: BertModel's vectors of the check texts and the graph's bytes)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    home = tmp_path_factory.mktemp("xdg")
    exported = []
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(home))
    real_export = emb_mod._export_packed_minilm
    mp.setattr(emb_mod, "_export_packed_minilm", lambda path: exported.append(real_export(path)) or exported[-1])
    try:
        emb_mod.load_minilm_onnx(emb_mod.minilm_path())
        file = emb_mod.minilm_onnx_file(emb_mod.minilm_path())
    finally:
        mp.undo()
    assert len(exported) == 1 and os.path.exists(file)
    return home, file, exported[0]


@pytest.fixture(scope="module")
def real_texts_and_reference(strategyqa_pool):
    from treegen.task import load_examples

    examples, _ = load_examples(strategyqa_pool)
    texts = [e.text() for e in examples[:22]] + ["", "word " * 400]  # an empty text; one truncated at 256
    reference = np.concatenate([_transformers_vectors(texts[i : i + 8]) for i in range(0, len(texts), 8)])
    return texts, reference


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_backends_give_transformers_vectors_on_real_texts_alone_and_in_passes(backend, real_texts_and_reference,
                                                                              onnx_cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(onnx_cache[0]))
    texts, reference = real_texts_and_reference
    embedder = emb_mod.MiniLMEmbedder(backend=backend)
    whole = embedder.embed(texts)
    assert embedder.backend == backend
    alone = np.stack([embedder.embed([t])[0] for t in texts[:3] + texts[-2:]])
    np.testing.assert_allclose(whole, reference, rtol=0, atol=1e-5)
    np.testing.assert_allclose(alone, reference[[0, 1, 2, -2, -1]], rtol=0, atol=1e-5)
    # not a trivially small error: the vectors are the model's, rows differ from each other
    assert np.abs(whole[0] - whole[1]).max() > 1e-2


def test_onnx_cache_is_reused_without_exporting_or_importing_torch(onnx_cache, tmp_path):
    import subprocess
    import sys

    home, file, _ = onnx_cache
    mtime = os.stat(file).st_mtime_ns
    script = ("import sys\n"
              "from treegen import embedders as e\n"
              "def no_export(path): raise AssertionError('exported again')\n"
              "e._export_packed_minilm = no_export\n"
              "m = e.MiniLMEmbedder(backend='onnx')\n"
              "v = m.embed(['Is the sky blue?'])\n"
              "assert m.backend == 'onnx' and v.shape == (1, 384)\n"
              "print('torch' in sys.modules)\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(home), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"  # a run with a cached graph never loads torch
    assert os.stat(file).st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["flipped bytes", "garbage with a matching checksum", "no checksum"])
def test_damaged_cache_is_exported_again(damage, onnx_cache, tmp_path, monkeypatch):
    import hashlib
    import shutil

    _, good_file, (_, payload) = onnx_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    file = emb_mod.minilm_onnx_file(emb_mod.minilm_path())
    os.makedirs(os.path.dirname(file))
    shutil.copy(good_file, file)
    shutil.copy(good_file + ".sha256", file + ".sha256")
    if damage == "flipped bytes":
        with open(file, "r+b") as f:
            f.seek(len(payload) // 2)
            f.write(b"\xff" * 64)
    elif damage == "garbage with a matching checksum":
        bad = b"not an onnx graph" * 100
        with open(file, "wb") as f:
            f.write(bad)
        with open(file + ".sha256", "w") as f:
            f.write(hashlib.sha256(bad).hexdigest())
    else:
        os.unlink(file + ".sha256")
    exports = []

    def counting(path):  # the fixture's real export, without paying for it again
        exports.append(path)
        return onnx_cache[2]

    monkeypatch.setattr(emb_mod, "_export_packed_minilm", counting)
    session = emb_mod.load_minilm_onnx(emb_mod.minilm_path())
    assert len(exports) == 1
    with open(file, "rb") as f:
        rebuilt = f.read()
    with open(file + ".sha256") as f:
        assert f.read().strip() == hashlib.sha256(rebuilt).hexdigest()
    got = session.run(None, emb_mod.pack_token_ids([[101, 2003, 1996, 3712, 2630, 102]]))[0]
    assert got.shape == (1, 384) and abs(float(np.linalg.norm(got)) - 1) < 1e-5
    # and the next load takes the rebuilt file as it is
    monkeypatch.setattr(emb_mod, "_export_packed_minilm", lambda path: pytest.fail("exported twice"))
    emb_mod.load_minilm_onnx(emb_mod.minilm_path())


def test_auto_falls_back_to_torch_when_the_onnx_graph_cannot_be_made(monkeypatch, caplog):
    def broken(path, threads=1):
        raise ConfigError("Exporting MiniLM for onnxruntime needs the onnx package once: pip install onnx")

    monkeypatch.setattr(emb_mod, "load_minilm_onnx", broken)
    auto = emb_mod.MiniLMEmbedder(backend="auto")
    with caplog.at_level("WARNING", logger="treegen.embedders"):
        vectors = auto.embed(["Is the sky blue?", "Can a cat swim?"])
    assert auto.backend == "torch" and vectors.shape == (2, 384)
    assert "pip install onnx" in caplog.text
    forced = emb_mod.MiniLMEmbedder(backend="onnx")  # asked for by name: its error, no fallback
    with pytest.raises(ConfigError, match="pip install onnx"):
        forced.embed(["Is the sky blue?"])


@pytest.mark.parametrize("name", ["TREEGEN_EMBED_WORKERS", "TREEGEN_EMBED_THREADS"])
def test_a_bad_minilm_setting_is_refused_before_the_run_exists(tmp_path, yesno_seeds, monkeypatch, name):
    from typer.testing import CliRunner

    from treegen.cli import app

    monkeypatch.setenv(name, "0")
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(yesno_seeds), "--backend", "sim", "--strategy", "contrastive",
                                      "--max-calls", "3", "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert name in result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert not out.exists() or not any(out.iterdir())
