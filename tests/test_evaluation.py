"""train / eval on small run databases built here from real dataset rows; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treegen import datasets
from treegen.cli import app
from treegen.cli_students import register
from treegen.store import RunStore, node_row, utcnow

if "train" not in {c.name for c in app.registered_commands}:
    register(app)
runner = CliRunner()


def make_run(folder: Path, task: str, n: int, *, simulated: int = 1, strategy: str = "tree", offset: int = 0,
             spent_micro: int = 0, tokens: int = 0, data_dir: Path | None = None) -> Path:
    """A run folder whose accepted nodes are ``n`` real training rows of ``task`` (one call made them),
    written through ``RunStore`` as the engine writes a run."""
    examples, fmt, _ = datasets.load_split(task, "train", data_dir, limit=offset + n)
    examples = examples[offset:]
    folder.mkdir(parents=True, exist_ok=True)
    store = RunStore.create(folder / "treegen.db", {
        "id": folder.name, "created_at": utcnow(), "updated_at": utcnow(), "status": "completed",
        "simulated": simulated, "task_format": fmt.name, "strategy": strategy, "model": "m", "seed": 0,
        "config": "{}"}, [])
    with store:
        store.insert_call({"id": 1, "created_at": utcnow(), "status": "ok", "attempt": 1, "strategy": strategy,
                           "prompt_tokens": tokens // 2, "completion_tokens": tokens - tokens // 2,
                           "cost_micro": spent_micro, "simulated": simulated, "depth": 1})
        nodes = [node_row(e, parent_id=None, root_id=None, depth=1, call_id=1, strategy=strategy,
                          status="accepted", reason=None) for e in examples]
        store.record_reply(1, {"n_parsed": len(nodes), "n_accepted": len(nodes)}, nodes, [])
    return folder


def results(folder: Path) -> list[dict]:
    """The student results stored in a run folder or a --data/--human folder (none if no database)."""
    if not (folder / "treegen.db").exists():
        return []
    from treegen.evaluation import results_store

    with results_store(folder) as store:
        return store.student_results()


def _results(folder: Path) -> list[dict]:
    return results(folder)


def test_train_and_eval_run_stores_rows(tmp_path, datasets_dir):
    run = make_run(tmp_path / "run-a", "strategyqa", 600)
    r = runner.invoke(app, ["train", str(run), "--student", "lexical", "--task", "strategyqa", "--seed", "3"],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "SIMULATED" in r.output
    sdir = run / "students" / "lexical-strategyqa-s3"
    assert (sdir / "treegen_student.json").is_file() and (sdir / "training.json").is_file()
    r = runner.invoke(app, ["eval", str(run), "--task", "strategyqa", "--limit", "100"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    rows = _results(run)
    assert {(x["dataset"], x["role"]) for x in rows} == {("strategyqa", "id"), ("boolq_close", "ood"), ("creak", "ood")}
    for x in rows:
        assert x["student"] == "lexical" and x["seed"] == 3 and x["simulated"] == 1 and x["source"] == "run"
        assert x["n"] == (100 if x["dataset"] != "strategyqa" else 100) and 0 <= x["accuracy"] <= 1
        assert x["n_train"] == 600 and x["split"] == "test"
    assert "OOD" in r.output and "creak" in r.output and "SIMULATED" in r.output
    idrow = next(x for x in rows if x["role"] == "id")
    assert f"{idrow['accuracy'] * 100:.1f}%" in r.output


def test_train_human_and_data_file(tmp_path, datasets_dir):
    out = tmp_path / "human"
    r = runner.invoke(app, ["train", "--human", "creak", "--student", "lexical", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "students" / "lexical-creak-s0" / "weights.npz").is_file() and (out / "treegen.db").is_file()
    r = runner.invoke(app, ["eval", str(out), "--task", "creak", "--limit", "200", "--split", "dev"])
    assert r.exit_code == 0, r.output
    rows = _results(out)
    assert len(rows) == 3 and all(x["source"] == "human" and x["split"] == "dev" for x in rows)
    creak = next(x for x in rows if x["dataset"] == "creak")
    assert creak["accuracy"] > 0.55  # 10k human rows: above the 50% floor
    data = tmp_path / "d.jsonl"
    lines = (datasets_dir / "yesno_close" / "creak" / "train.jsonl").read_text().splitlines()[:60]
    data.write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["train", "--data", str(data), "--task", "creak", "--out", str(tmp_path / "d"),
                            "--student", "lexical"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "students" / "lexical-creak-s0" / "training.json").read_text())["n_train"] == 60


def _nothing_stored(run: Path) -> bool:
    return not (run / "students").exists() and _results(run) == []


def test_bad_input_exit_2_nothing_stored(tmp_path, datasets_dir):
    small = make_run(tmp_path / "small", "strategyqa", 3)
    r = runner.invoke(app, ["train", str(small), "--student", "lexical", "--task", "strategyqa"])
    assert r.exit_code == 2 and "needs at least" in r.output and _nothing_stored(small)
    r = runner.invoke(app, ["eval", str(small), "--task", "strategyqa"])
    assert r.exit_code == 2 and _nothing_stored(small)

    run = make_run(tmp_path / "ok", "strategyqa", 100)
    r = runner.invoke(app, ["train", str(run), "--task", "csqa"])
    assert r.exit_code == 2 and "yesno_close" in r.output and "csqa" in r.output and _nothing_stored(run)
    r = runner.invoke(app, ["eval", str(run), "--task", "boolq"])
    assert r.exit_code == 2 and "boolq_open" in r.output and _nothing_stored(run)
    r = runner.invoke(app, ["eval", str(run), "--task", "creak", "--data-dir", str(tmp_path / "no-data")])
    assert r.exit_code == 2 and "No dataset folder" in r.output and _nothing_stored(run)
    r = runner.invoke(app, ["train", str(run), "--student", "roberta"])
    assert r.exit_code == 2 and "lexical, minilm-frozen, minilm-ft" in r.output
    r = runner.invoke(app, ["train", str(tmp_path / "not-a-run"), "--task", "creak"])
    assert r.exit_code == 2 and "No treegen run" in r.output

    # A corrupt model folder: eval fails with the fix, stores nothing.
    r = runner.invoke(app, ["train", str(run), "--task", "creak", "--student", "lexical"])
    assert r.exit_code == 0, r.output
    (run / "students" / "lexical-creak-s0" / "weights.npz").write_bytes(b"broken")
    r = runner.invoke(app, ["eval", str(run), "--task", "creak", "--limit", "20"])
    assert r.exit_code == 2 and "corrupt" in r.output and "treegen train" in r.output
    assert _results(run) == []


def test_task_from_run_config_or_asked(tmp_path, datasets_dir):
    run = make_run(tmp_path / "r", "creak", 20)
    r = runner.invoke(app, ["train", str(run), "--student", "lexical"])
    assert r.exit_code == 2 and "--task" in r.output and "creak" in r.output and _nothing_stored(run)
    with RunStore.open(run) as store:
        store.save_config(json.dumps({"seeds_from": "creak"}))
    r = runner.invoke(app, ["train", str(run), "--student", "lexical"])
    assert r.exit_code == 0, r.output
    assert (run / "students" / "lexical-creak-s0").is_dir()


def test_train_defaults_to_minilm_frozen_and_says_so(tmp_path, datasets_dir):
    # Too few examples for any student: the error names the student chosen by default.
    small = make_run(tmp_path / "small", "strategyqa", 5)
    r = runner.invoke(app, ["train", str(small), "--task", "strategyqa"])
    assert r.exit_code == 2, r.output
    assert "minilm-frozen (the default" in r.output and "the minilm-frozen student needs at least 8" in r.output
    assert _nothing_stored(small)
    r = runner.invoke(app, ["train", str(small), "--task", "strategyqa", "--epochs", "2"])
    assert r.exit_code == 2 and "--epochs applies to the minilm-ft student only" in r.output


def test_eval_and_data_list_json_are_whole_documents(tmp_path, datasets_dir):
    run = make_run(tmp_path / "run-j", "creak", 100)
    r = runner.invoke(app, ["train", str(run), "--student", "lexical", "--task", "creak"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(run), "--task", "creak", "--limit", "30", "--json"], env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["task"] == "creak" and doc["simulated"] is True
    assert [x["dataset"] for x in doc["results"]] == ["creak", *datasets.ood_tasks("creak")]
    assert [(x["dataset"], x["accuracy"]) for x in results(run)] == [(x["dataset"], x["accuracy"]) for x in doc["results"]]
    r = runner.invoke(app, ["data", "list", "--json"], env={"COLUMNS": "30"})
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)
    assert {d["task"] for d in listed["datasets"]} == set(datasets.TASKS)
    # Narrow and piped: the table folds its cells, nothing is cut with an ellipsis.
    r = runner.invoke(app, ["data", "list"], env={"COLUMNS": "40"})
    assert r.exit_code == 0 and "…" not in r.stdout
    task_cells = "".join(line.split("│")[2].strip() for line in r.stdout.splitlines() if line.count("│") == 7)
    assert all(name in task_cells for name in datasets.TASKS)  # each name whole once its folds are rejoined
