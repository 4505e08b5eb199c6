"""train / eval on small run databases built here from real dataset rows; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from treegen import datasets
from treegen.cli import app
from treegen.cli_students import register
from treegen.task import dedup_key
from treegen.store import open_db, utcnow

if "train" not in {c.name for c in app.registered_commands}:
    register(app)
runner = CliRunner()


def make_run(folder: Path, task: str, n: int, *, simulated: int = 1, strategy: str = "tree", offset: int = 0,
             spent_micro: int = 0, tokens: int = 0, data_dir: Path | None = None) -> Path:
    """A run folder whose accepted nodes are ``n`` real training rows of ``task`` (one call made them)."""
    examples, fmt, _ = datasets.load_split(task, "train", data_dir, limit=offset + n)
    examples = examples[offset:]
    folder.mkdir(parents=True, exist_ok=True)
    db = open_db(folder / "treegen.db")
    db["runs"].insert({"id": folder.name, "created_at": utcnow(), "updated_at": utcnow(), "status": "completed",
                       "simulated": simulated, "task_format": fmt.name, "strategy": strategy, "model": "m",
                       "seed": 0, "config": "{}"})
    db["calls"].insert({"id": 1, "created_at": utcnow(), "status": "ok", "attempt": 1, "strategy": strategy,
                        "prompt_tokens": tokens // 2, "completion_tokens": tokens - tokens // 2,
                        "cost_micro": spent_micro, "simulated": simulated, "depth": 1})
    db["nodes"].insert_all(
        {"status": "accepted", "depth": 1, "call_id": 1, "strategy": strategy, "question": e.question,
         "context": e.context, "options": json.dumps(list(e.options)), "label": e.label,
         "dedup_key": dedup_key(e), "created_at": utcnow()}
        for e in examples
    )
    return folder


def _results(folder: Path) -> list[dict]:
    db = open_db(folder / "treegen.db")
    return list(db["student_results"].rows) if db["student_results"].exists() else []


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
    r = runner.invoke(app, ["train", "--data", str(data), "--task", "creak", "--out", str(tmp_path / "d")])
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
    r = runner.invoke(app, ["train", str(run), "--task", "creak"])
    assert r.exit_code == 0, r.output
    (run / "students" / "lexical-creak-s0" / "weights.npz").write_bytes(b"broken")
    r = runner.invoke(app, ["eval", str(run), "--task", "creak", "--limit", "20"])
    assert r.exit_code == 2 and "corrupt" in r.output and "treegen train" in r.output
    assert _results(run) == []


def test_task_from_run_config_or_asked(tmp_path, datasets_dir):
    run = make_run(tmp_path / "r", "creak", 20)
    db = open_db(run / "treegen.db")
    r = runner.invoke(app, ["train", str(run)])
    assert r.exit_code == 2 and "--task" in r.output and "creak" in r.output and _nothing_stored(run)
    db.execute("update runs set config = ?", [json.dumps({"seeds_from": "creak"})])
    db.conn.commit()
    r = runner.invoke(app, ["train", str(run)])
    assert r.exit_code == 0, r.output
    assert (run / "students" / "lexical-creak-s0").is_dir()
