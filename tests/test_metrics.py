"""Quality measures: known answers on hand-built sets, brute-force checks, and real runs via the CLI."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from treegen import metrics
from treegen.datasets import load_split
from treegen.embedders import get_embedder
from treegen.store import RunStore, node_row
from treegen.task import Example

# ---------------------------------------------------------------- diversity, known answers


def test_distinct_n_identical_items_minimal_and_budget_fixed():
    same = [["a", "b", "c", "d"]] * 10
    values, k = metrics.distinct_n(same, budget=40)
    assert k == 40
    # The stream is a b c d a b c d ...: 4 distinct n-grams of each order.
    assert values[1] == pytest.approx(4 / 40)
    assert values[2] == pytest.approx(4 / 39)
    assert values[4] == pytest.approx(4 / 37)
    varied = [[f"w{i}_{j}" for j in range(4)] for i in range(10)]
    assert metrics.distinct_n(varied, budget=40)[0][1] == 1.0
    # Fixed K: doubling every item's length does not change the figure of a repetitive set.
    long_same = [["a", "b", "c", "d"] * 2] * 10
    assert metrics.distinct_n(long_same, budget=40)[0] == values
    # Fewer tokens than K: K is what there is, and it is reported.
    assert metrics.distinct_n(same[:3], budget=40)[1] == 12


def _brute_bleu4(hyp: list[str], refs: list[list[str]], eps: float = metrics.BLEU_EPSILON) -> float:
    """Textbook multi-reference sentence BLEU-4 (method-1 smoothing), no shortcuts."""
    log_p, w = 0.0, 0
    for n in range(1, 5):
        h = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        total = sum(h.values())
        if total == 0:
            continue
        best: Counter = Counter()
        for r in refs:
            for g, c in Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1)).items():
                best[g] = max(best[g], c)
        clipped = sum(min(c, best[g]) for g, c in h.items())
        log_p += math.log((clipped or eps) / total)
        w += 1
    c = len(hyp)
    r = min((len(x) for x in refs), key=lambda x: (abs(x - c), x))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_p / w)


def test_self_bleu_known_answers_and_matches_brute_force():
    same = [["the", "cat", "sat", "on", "the", "mat"]] * 20
    assert metrics.self_bleu(same)[0] == pytest.approx(1.0, abs=1e-12)
    disjoint = [[f"t{i}_{j}" for j in range(6)] for i in range(20)]
    # No shared n-gram: every precision is the smoothing epsilon over the n-gram count.
    floor = math.exp(np.mean([math.log(0.1 / t) for t in (6, 5, 4, 3)]))
    assert metrics.self_bleu(disjoint)[0] == pytest.approx(floor, rel=1e-12)
    rng = random.Random(1)
    vocab = "a b c d e f g h i j".split()
    items = [[rng.choice(vocab) for _ in range(rng.randint(2, 12))] for _ in range(60)]
    expected = np.mean([_brute_bleu4(items[i], items[:i] + items[i + 1 :]) for i in range(60)])
    value, n = metrics.self_bleu(items, max_items=1000)
    assert n == 60
    assert value == pytest.approx(expected, rel=1e-9)
    # Above the limit a seeded subsample is used, the same for the same seed.
    assert metrics.self_bleu(items, max_items=30, seed=3) == metrics.self_bleu(items, max_items=30, seed=3)
    assert metrics.self_bleu(items, max_items=30)[1] == 30


def test_embedding_diversity_known_answers_and_brute_force(monkeypatch):
    one = np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (5, 1))
    assert metrics.remote_clique(one) == pytest.approx(0.0, abs=1e-6)
    assert metrics.mean_pairwise_cosine(one) == pytest.approx(1.0, abs=1e-6)
    ortho = np.eye(3, dtype=np.float32)
    assert metrics.remote_clique(ortho) == pytest.approx(math.sqrt(2), rel=1e-6)
    assert metrics.mean_pairwise_cosine(ortho) == pytest.approx(0.0, abs=1e-7)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    monkeypatch.setattr(metrics, "_BLOCK", 64)  # several blocks, and a ragged last one
    d = np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0))
    off = ~np.eye(300, dtype=bool)
    assert metrics.remote_clique(x) == pytest.approx(d[off].mean(), rel=1e-4)
    sims = x @ x.T
    assert metrics.mean_pairwise_cosine(x) == pytest.approx(sims[off].mean(), abs=1e-6)
    labels = ["True" if i % 3 else "False" for i in range(300)]
    lab = np.array(labels)
    same = (lab[:, None] == lab[None, :]) & off
    within, across = metrics.label_cosines(x, labels)
    assert within == pytest.approx(sims[same].mean(), abs=1e-6)
    assert across == pytest.approx(sims[~same & off].mean(), abs=1e-6)


def test_distributions_and_drift_known_answers():
    yes = Example("q1", ("True", "False"), "True")
    no = Example("q2", ("True", "False"), "False")
    assert metrics.total_variation(metrics.label_distribution([yes, yes]), metrics.label_distribution([yes, no])) == 0.5
    mc = [Example("q", ("x", "y", "z"), "y"), Example("r", ("x", "y", "z"), "x")]
    assert metrics.label_distribution(mc) == {"option 1": 0.5, "option 2": 0.5}
    assert metrics.ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert metrics.ks_statistic([1, 2, 3], [10, 11]) == 1.0
    emb = np.array([[1, 0], [0, 1], [1, 0], [-1, 0]], dtype=np.float32)
    roots = np.array([[1, 0]] * 4, dtype=np.float32)
    drift = metrics.drift_by_depth(emb, [1, 1, 2, 2], roots)
    assert drift[1] == (pytest.approx(0.5), 2)  # distances 0 and 1
    assert drift[2] == (pytest.approx(1.0), 2)  # distances 0 and 2


# ---------------------------------------------------------------- real data


def test_contamination_on_real_test_items(datasets_dir):
    test, _fmt, _ = load_split("strategyqa", "test")
    train, _fmt, _ = load_split("strategyqa", "train", limit=40)
    copied = test[:3]
    reworded = Example(test[5].question.rstrip("?") + " really?", test[5].options, test[5].label)
    created = train + copied + [reworded]
    emb = get_embedder("hashing")
    res = metrics.contamination(created, emb.embed([metrics.item_text(e) for e in created]), test,
                                emb.embed([metrics.item_text(e) for e in test]), threshold=0.8)
    assert res["exact"] == 3
    assert res["near"] == 1
    assert res["rate"] == pytest.approx(4 / 44)
    assert res["flagged"] == [40, 41, 42, 43]


def test_measure_on_real_slices_orders_sets_sensibly(datasets_dir):
    """Created = a real slice; against its own task it conforms, against another it does not."""
    ref = metrics.load_reference("strategyqa", None)
    created, _fmt, _ = load_split("strategyqa", "dev", limit=100)
    own = metrics.measure(created, ref, embedder="hashing", student="lexical", mauve_items=400)
    other_task = load_split("creak", "dev", limit=100)[0]
    other = metrics.measure(other_task, ref, embedder="hashing", student=None, mauve_items=400)
    names = {m.name for m in own.metrics}
    assert {"distinct_1", "distinct_4", "distinct_k_tokens", "self_bleu", "remote_clique", "aps", "aps_within_label",
            "aps_across_label", "mean_cosine_distance", "mauve", "faithfulness", "complexity", "performance",
            "label_balance_tv", "length_mean", "length_std", "length_ks", "contamination_exact",
            "contamination_near", "contamination_rate"} <= names
    assert own.get("mauve").value > other.get("mauve").value
    assert own.get("faithfulness").n_items == 100 and other.get("faithfulness") is None
    assert 0.0 <= own.get("complexity").value <= 1.0
    # The created slice IS the dev split, part of the contamination pool: every item is a copy.
    assert own.get("contamination_rate").value == 1.0
    assert any(n.startswith("CONTAMINATED") for n in own.notes)
    assert other.get("contamination_rate").value == 0.0


# ---------------------------------------------------------------- the command


def _app():
    from treegen.cli import app
    from treegen.cli_metrics import register

    names = {c.name for c in app.registered_commands}
    if "metrics" not in names:
        register(app)
    return app


def _build_run(folder: Path, accepted: list[Example], seeds: list[Example], simulated: int = 1) -> Path:
    """A run database with real examples: seeds at depth 0, accepted nodes spread over depths 1-3,
    written through ``RunStore`` (seeds by ``create``, the rest by ``record_reply``)."""
    folder.mkdir(parents=True, exist_ok=True)
    store = RunStore.create(folder / "treegen.db", {
        "id": folder.name, "created_at": "2026-01-01T00:00:00+00:00", "status": "completed",
        "simulated": simulated, "task_format": "yesno_close", "strategy": "tree", "config": "{}"}, seeds)
    with store:
        seed_ids = [r["id"] for r in store.nodes(statuses=("seed",))]
        store.insert_call({"id": 1, "created_at": "2026-01-01T00:00:01+00:00", "status": "ok", "attempt": 1,
                           "strategy": "tree", "depth": 1})
        rows = [node_row(ex, parent_id=seed_ids[i % len(seed_ids)], root_id=seed_ids[i % len(seed_ids)],
                         depth=1 + i % 3, call_id=None, strategy="tree", status="accepted", reason=None)
                for i, ex in enumerate(accepted)]
        rows.append(node_row(None, parent_id=None, root_id=None, depth=1, call_id=None, strategy="tree",
                             status="rejected", reason="invalid-json", raw="{"))
        store.record_reply(1, {"n_parsed": len(rows)}, rows, [])
    return folder


def _metric_rows(run: Path) -> dict[str, dict]:
    """The stored ``metrics`` rows by name (latest wins), read from the run database read-only.

    RunStore has no reader for whole metric rows (only ``latest_metric``), so the test reads the
    table itself, without SQL, through sqlite_utils.
    """
    import sqlite3

    import sqlite_utils

    conn = sqlite3.connect(f"file:{run / 'treegen.db'}?mode=ro", uri=True)
    try:
        db = sqlite_utils.Database(conn)
        return {r["name"]: r for r in db["metrics"].rows} if db["metrics"].exists() else {}
    finally:
        conn.close()


def test_cli_run_stores_figures_marks_simulated_and_flags_contamination(tmp_path, datasets_dir):
    train, _fmt, _ = load_split("strategyqa", "train", limit=64)
    test, _fmt, _ = load_split("strategyqa", "test", limit=3)
    run = _build_run(tmp_path / "runs" / "r1", accepted=train[4:] + test, seeds=train[:4])
    result = CliRunner().invoke(_app(), ["metrics", str(run), "--reference", "strategyqa", "--embedder", "hashing",
                                         "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["simulated"] is True and out["label"] == "SIMULATED"
    assert out["stored"] is True and out["n_items"] == 63
    assert out["metrics"]["contamination_exact"]["value"] == 3
    assert out["metrics"]["contamination_rate"]["value"] == pytest.approx(3 / 63)
    assert {"drift_depth_1", "drift_depth_2", "drift_depth_3"} <= set(out["metrics"])
    assert not any(n.startswith("CONTAMINATED") for n in out["notes"])  # 4.8 %, under the 5 % flag
    rows = _metric_rows(run)
    assert rows["contamination_rate"]["value"] == pytest.approx(3 / 63)
    assert rows["mauve"]["simulated"] == 1 and rows["mauve"]["reference"] == "strategyqa"
    assert json.loads(rows["distinct_1"]["params"])["K"] == out["metrics"]["distinct_k_tokens"]["value"]
    # The table form says SIMULATED and shows drift per depth.
    table = CliRunner().invoke(_app(), ["metrics", str(run), "--reference", "strategyqa", "--embedder", "hashing",
                                        "--student", "none"])
    assert table.exit_code == 0, table.output
    assert "SIMULATED" in table.stdout and "Drift" in table.stdout and "Stored" in table.stdout


def test_cli_jsonl_file_with_reference_file_stores_nothing(tmp_path, datasets_dir):
    created = load_split("creak", "dev", limit=40)[0]
    human = load_split("creak", "train", limit=80)[0]
    data, ref = tmp_path / "data.jsonl", tmp_path / "human.jsonl"
    data.write_text("".join(e.to_json() + "\n" for e in created), encoding="utf-8")
    ref.write_text("".join(e.to_json() + "\n" for e in human), encoding="utf-8")
    result = CliRunner().invoke(_app(), ["metrics", str(data), "--reference-file", str(ref), "--embedder", "hashing",
                                         "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["stored"] is False and out["simulated"] is False and "label" not in out
    assert "faithfulness" in out["metrics"] and "contamination_rate" not in out["metrics"]
    assert any("contamination not measured" in n for n in out["notes"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "human.jsonl"]


def test_cli_bad_input_exits_2_and_stores_nothing(tmp_path, datasets_dir):
    train, _fmt, _ = load_split("strategyqa", "train", limit=20)
    run = _build_run(tmp_path / "r2", accepted=train[2:], seeds=train[:2])
    app = _app()
    cases = [
        (["metrics", str(run), "--reference", "nosuchtask"], "Unknown task"),
        (["metrics", str(run), "--reference", "csqa", "--embedder", "hashing"], "yesno_close"),  # wrong format
        (["metrics", str(run), "--reference", "strategyqa", "--embedder", "bert"], "Unknown embedder"),
        (["metrics", str(run)], "--reference"),
        (["metrics", str(run), "--reference", "strategyqa", "--distinct-tokens", "5"], "--distinct-tokens"),
        (["metrics", str(tmp_path / "missing"), "--reference", "strategyqa"], "does not exist"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    assert len(_metric_rows(run)) == 0
    empty = _build_run(tmp_path / "r3", accepted=[], seeds=train[:2])
    result = CliRunner().invoke(app, ["metrics", str(empty), "--reference", "strategyqa"])
    assert result.exit_code == 2 and "0 accepted" in result.output


def test_cli_reports_every_step_on_stderr(tmp_path, datasets_dir):
    created = load_split("creak", "dev", limit=40)[0]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(e.to_json() + "\n" for e in created), encoding="utf-8")
    result = CliRunner().invoke(_app(), ["metrics", str(data), "--reference", "creak", "--embedder", "hashing",
                                         "--json"])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # the progress lines are on stderr only
    for step in ("distinct-n", "self-BLEU", "embedding the created items", "MAUVE", "faithfulness (lexical student)",
                 "complexity (lexical student)", "performance (lexical student)", "contamination"):
        assert f"{step} ..." in result.stderr, (step, result.stderr)


def test_measure_reports_each_step_start_and_end():
    created = [Example(f"Is thing {i} heavy?", ("True", "False"), "True" if i % 2 else "False") for i in range(12)]
    seen: list[tuple[int, int, str]] = []
    metrics.measure(created, metrics.Reference("ref", created), embedder="hashing", student=None,
                    on_progress=lambda d, t, w: seen.append((d, t, w)))
    steps = [w for d, t, w in seen if (d, t) == (0, 1)]
    assert steps[:3] == ["distinct-n", "self-BLEU", "loading the hashing embedder"] and "MAUVE" in steps
    assert [w for d, t, w in seen if (d, t) == (1, 1)] == steps  # every step that starts ends
