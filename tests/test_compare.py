"""`treegen compare`: PGR by hand, md/csv/png, simulated and contaminated runs marked."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from test_evaluation import make_run, results
from treegen import datasets
from treegen.cli import app
from treegen.cli_students import register
from treegen.compare import latest_metrics, mean_std, pgr
from treegen.store import RunStore, utcnow

if "compare" not in {c.name for c in app.registered_commands}:
    register(app)
runner = CliRunner()


def test_pgr_by_hand():
    # floor 50%, human 70%, generated 60%: half the gap recovered.
    assert pgr(0.60, 0.50, 0.70) == pytest.approx(50.0)
    assert pgr(0.45, 0.50, 0.70) == pytest.approx(-25.0)
    assert pgr(0.80, 0.50, 0.50) is None  # no gap to recover
    assert mean_std([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(0.1414, abs=1e-3))
    assert mean_std([None]) == (None, None)


def test_mean_std_formatting():
    from treegen.compare import _fmt_ms

    assert _fmt_ms([0.5, 0.7]) == "60.0 ± 14.1"
    assert _fmt_ms([0.5]) == "50.0"
    assert _fmt_ms([12.5, None], pct=False) == "12.5"
    assert _fmt_ms([]) == "n/a"


def test_latest_metrics(tmp_path, datasets_dir):
    run = make_run(tmp_path / "r", "strategyqa", 10)
    with RunStore.open(run) as db:
        assert latest_metrics(db) == ({}, None)
        db.insert_metrics([
            {"name": "mauve", "value": 0.5, "created_at": "2026-01-01T00:00:00"},
            {"name": "mauve", "value": 0.7, "created_at": "2026-01-02T00:00:00"},
            {"name": "contamination_rate", "value": 0.2, "created_at": "2026-01-01T00:00:00"},
        ])
        assert latest_metrics(db) == ({"mauve": 0.7}, 0.2)


def test_compare_runs_md_csv_png(tmp_path, datasets_dir):
    a = make_run(tmp_path / "run-tree", "creak", 300, simulated=1, strategy="tree", spent_micro=120_000,
                 tokens=40_000)
    b = make_run(tmp_path / "run-bfs", "creak", 200, simulated=0, strategy="bfs", offset=300,
                 spent_micro=50_000, tokens=20_000)
    with RunStore.open(b) as db:
        db.insert_metrics([
            {"name": "contamination_rate", "value": 0.08, "created_at": utcnow()},
            {"name": "distinct_4", "value": 0.91, "created_at": utcnow()},
        ])
    out = tmp_path / "cmp"
    r = runner.invoke(app, ["compare", str(a), str(b), "--task", "creak", "--seeds", "0", "--out", str(out),
                            "--human-limit", "3000"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    md = (out / "compare-creak-lexical.md").read_text()
    png = (out / "compare-creak-lexical.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "SIMULATED" in md and "CONTAMINATED: 8.0%" in md and "human (D_L)" in md and "0.910" in md
    assert "CONTAMINATED" in r.output and "SIMULATED" in r.output
    rows = list(csv.DictReader((out / "compare-creak-lexical.csv").open()))
    assert [x["run"] for x in rows] == ["run-tree", "run-bfs", "human (creak train)"]
    tree, bfs, human = rows
    assert tree["simulated"] == "1" and bfs["simulated"] == "0" and human["is_human"] == "1"
    assert float(tree["spent_usd"]) == pytest.approx(0.12) and int(tree["tokens"]) == 40_000
    assert float(tree["usd_per_accepted"]) == pytest.approx(0.0004)
    assert int(human["accepted"]) == 3000
    # PGR from the stored per-seed accuracies, by the formula.
    test = datasets.load_split("creak", "test", datasets_dir)[0]
    floor = datasets.test_majority_floor(test)
    assert float(tree["floor"]) == pytest.approx(floor)
    accs = {}
    for folder in (a, tmp_path / "cmp" / "human"):
        for x in [r for r in results(folder) if r["dataset"] == "creak" and r["role"] == "id"]:
            accs.setdefault(folder.name, {})[x["seed"]] = x["accuracy"]
    human_mean = accs["human"][0]
    assert human_mean > floor + 0.02  # 3,000 human rows: the reference beats the floor
    expected = 100 * (accs["run-tree"][0] - floor) / (human_mean - floor)
    assert float(tree["pgr_mean"]) == pytest.approx(expected)
    assert float(tree["id_acc_mean"]) == pytest.approx(accs["run-tree"][0])
    assert f"{expected:.1f}" in md
    # Running again reuses the trained students and stored results: no new rows.
    n_before = len(results(a))
    r = runner.invoke(app, ["compare", str(a), "--task", "creak", "--seeds", "0", "--out", str(out),
                            "--human-limit", "3000"])
    assert r.exit_code == 0, r.output
    assert len(results(a)) == n_before


def test_compare_bad_input(tmp_path, datasets_dir):
    ok = make_run(tmp_path / "ok", "strategyqa", 50)
    small = make_run(tmp_path / "small", "strategyqa", 2)
    r = runner.invoke(app, ["compare", str(ok), str(small), "--task", "strategyqa", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "needs at least" in r.output
    assert not (tmp_path / "o").exists() and not (ok / "students").exists()
    r = runner.invoke(app, ["compare", str(ok), "--task", "csqa", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "mcqa_5" in r.output
    r = runner.invoke(app, ["compare", str(ok), "--task", "strategyqa", "--seeds", "a,b"])
    assert r.exit_code == 2 and "--seeds" in r.output


def test_plot_labels_each_run_joins_only_its_own_seeds_and_shows_ood_beside_id():
    from treegen.compare import Row, figure

    header = {"task": "creak", "student": "lexical", "seeds": [0, 1], "floor": 0.5,
              "ood": ["boolq_close", "strategyqa"]}
    a = Row("run-a", "tree", True, 100, 20_000, 1000, id_acc=[0.60, 0.64],
            ood_acc={"boolq_close": [0.55, 0.57], "strategyqa": [0.51, 0.53]})
    b = Row("run-b", "tree", False, 100, 50_000, 1000, id_acc=[0.70, 0.66],
            ood_acc={"boolq_close": [0.58, 0.60], "strategyqa": [0.52, 0.50]})
    human = Row("human", "human (D_L)", False, None, None, None, id_acc=[0.8, 0.8],
                ood_acc={"boolq_close": [0.6, 0.6], "strategyqa": [0.55, 0.55]})
    fig = figure([a, b], human, header)
    try:
        id_ax, ood_ax = fig.axes
        assert "ID" in id_ax.get_ylabel() and "OOD" in ood_ax.get_ylabel()
        for ax, means in ((id_ax, {0.02: 62.0, 0.05: 68.0}), (ood_ax, {0.02: 54.0, 0.05: 55.0})):
            assert sorted(t.get_text() for t in ax.texts) == ["run-a (SIMULATED)", "run-b"]
            for line in ax.get_lines():
                xs = list(line.get_xdata())
                if len(set(xs)) > 1:  # a horizontal reference spans the axes; nothing else may join runs
                    assert len(set(line.get_ydata())) == 1
            points = {round(float(t.xy[0]), 3): t.xy[1] for t in ax.texts}
            assert points == pytest.approx(means)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_compare_json(tmp_path, datasets_dir):
    a = make_run(tmp_path / "run-j", "creak", 60, simulated=0, spent_micro=30_000)
    r = runner.invoke(app, ["compare", str(a), "--task", "creak", "--seeds", "0", "--out", str(tmp_path / "cmp"),
                            "--human-limit", "200", "--limit", "40", "--json"], env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["task"] == "creak" and [x["run"] for x in doc["runs"]] == ["run-j"]
    run = doc["runs"][0]
    assert run["spent_micro"] == 30_000 and run["accepted"] == 60 and run["simulated"] is False
    assert set(run["ood_accuracy"]) == set(datasets.ood_tasks("creak"))
    assert doc["human"]["accepted"] == 200 and (tmp_path / "cmp" / "compare-creak-lexical.png").is_file()
