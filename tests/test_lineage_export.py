"""The search tree (networkx, GraphML) and the export of a real run database."""

from __future__ import annotations

import json

import networkx as nx
import pytest
from typer.testing import CliRunner

from factories import SCENARIO, build_run
from treegen.errors import InputError
from treegen.task import TaskFormat, example_from_dict, load_examples
from treegen.export import export_run, meta_path
from treegen.lineage import build_tree, depth_profile, export_graphml, subtree_accepted, subtree_cost
from treegen.store import RunStore


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    with RunStore.open(build_run(tmp_path_factory.mktemp("lin") / "run-sim"), readonly=True) as store:
        yield store


def test_tree_shape_and_attributes(db):
    G = build_tree(db)
    assert G.number_of_nodes() == SCENARIO["seeds"] + SCENARIO["accepted"]
    assert G.number_of_edges() == SCENARIO["accepted"]  # every accepted node has its parent
    assert nx.is_forest(G)
    roots = [n for n in G if G.in_degree(n) == 0]
    assert all(G.nodes[n]["status"] == "seed" and G.nodes[n]["depth"] == 0 for n in roots)
    for parent, child in G.edges:
        assert G.nodes[child]["depth"] == G.nodes[parent]["depth"] + 1
        assert G.nodes[child]["root_id"] == G.nodes[parent]["root_id"]
    a = G.nodes[4]
    assert a["status"] == "accepted" and a["strategy"] == "tree" and a["cost_share_micro"] == 150
    assert a["label"] in ("True", "False") and a["question"].endswith("?")
    full = build_tree(db, include_rejected=True)
    assert full.number_of_nodes() == SCENARIO["seeds"] + SCENARIO["accepted"] + SCENARIO["rejected"]
    assert "question" not in full.nodes[8]  # the invalid-json candidate has no question


def test_subtree_cost_and_accepted(db):
    full = build_tree(db, include_rejected=True)
    kept = build_tree(db)
    seeds = [n for n, a in full.nodes(data=True) if a["status"] == "seed"]
    # The seeds' subtrees together hold every candidate, so their costs add up to all shares.
    assert sum(subtree_cost(full, s) for s in seeds) == SCENARIO["node_shares_micro"]
    # Seed 1: A 150 + B 150 + dup 150 (call 1) and F 132 + G 131 + two rejected 131 each (call 5).
    assert subtree_cost(full, 1) == 450 + 525
    assert subtree_cost(kept, 1) == 150 + 150 + 132 + 131
    assert subtree_cost(full, 4) == 150 + 525  # node A and the call made from it
    assert subtree_accepted(full, 1) == 4 and subtree_accepted(full, 2) == 1 and subtree_accepted(full, 3) == 0
    assert subtree_accepted(full, 4) == 3  # A itself and its two accepted children
    profile = depth_profile(full)
    assert [r["depth"] for r in profile] == [0, 1, 2]
    assert sum(r["cost_micro"] for r in profile) == SCENARIO["node_shares_micro"]
    assert profile[0]["mean_accepted_children"] == pytest.approx(3 / 3)
    assert profile[1]["mean_accepted_children"] == pytest.approx(2 / 3)


def test_graphml_round_trip(db, tmp_path):
    out = tmp_path / "tree.graphml"
    n = export_graphml(db, out)
    assert n == 12
    H = nx.read_graphml(out, node_type=int)
    G = build_tree(db, include_rejected=True)
    assert set(H.nodes) == set(G.nodes) and set(H.edges) == set(G.edges)
    assert H.nodes[9]["cost_share_micro"] == 132 and H.nodes[9]["depth"] == 2
    assert H.nodes[11]["reason"] == "label-not-in-options"
    assert H.graph["simulated"] is True and H.graph["run_id"] == "run-test"
    with pytest.raises(InputError, match="--force"):
        export_graphml(db, out)
    assert export_graphml(db, out, include_rejected=False, force=True) == 8


def test_export_plain_writes_meta(db, tmp_path):
    out = tmp_path / "data.jsonl"
    n = export_run(db, out)
    assert n == SCENARIO["accepted"]
    lines = out.read_text().splitlines()
    assert len(lines) == n
    rows = [json.loads(x) for x in lines]
    assert all(list(r) == ["question", "context", "options", "label"] for r in rows)
    fmt = TaskFormat.parse("yesno_close")
    assert [example_from_dict(r, fmt) for r in rows] == db.examples()
    # The file reads back with treegen's own loader, as a seed or training file would.
    examples, got_fmt = load_examples(out)
    assert got_fmt == fmt and len(examples) == n
    meta = json.loads(meta_path(out).read_text())
    assert meta["simulated"] is True and meta["n"] == n and meta["run_id"] == "run-test"
    assert meta["model"] == "gpt-4o-mini" and meta["strategy"] == "tree" and meta["exported_at"]


def test_export_lineage_and_seeds(db, tmp_path):
    out = tmp_path / "lineage.jsonl"
    n = export_run(db, out, lineage=True, include_seeds=True)
    assert n == SCENARIO["accepted"] + SCENARIO["seeds"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    lin = {r["_treegen"]["node_id"]: r["_treegen"] for r in rows}
    assert all(t["simulated"] is True for t in lin.values())
    assert lin[1]["parent_id"] is None and lin[1]["depth"] == 0 and lin[1]["call_id"] is None
    assert lin[9] == {
        "node_id": 9, "parent_id": 4, "root_id": 1, "depth": 2, "status": "accepted",
        "strategy": "tree", "cost_share_micro": 132, "call_id": 5, "simulated": True,
    }
    assert sum(t["cost_share_micro"] for t in lin.values()) == 150 + 150 + 203 + 132 + 131
    assert all(t["parent_id"] in lin for t in lin.values() if t["parent_id"] is not None)


def test_export_refuses_to_overwrite(db, tmp_path):
    out = tmp_path / "data.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(InputError, match="--force"):
        export_run(db, out)
    assert out.read_text() == "keep me\n" and not meta_path(out).exists()
    assert export_run(db, out, force=True) == SCENARIO["accepted"]
    with pytest.raises(InputError, match="does not exist"):
        export_run(db, tmp_path / "no" / "such" / "dir.jsonl")


def test_export_of_a_real_run_says_not_simulated(tmp_path):
    real = RunStore.open(build_run(tmp_path / "real", simulated=False, run_id="run-real"), readonly=True)
    out = tmp_path / "real.jsonl"
    export_run(real, out, lineage=True)
    assert json.loads(meta_path(out).read_text())["simulated"] is False
    assert all(json.loads(x)["_treegen"]["simulated"] is False for x in out.read_text().splitlines())


def test_cli_export_and_lineage(db, tmp_path):
    from treegen.cli import app
    from treegen.cli_reports import register

    register(app)
    runner = CliRunner()
    run_dir = str(db.run_dir)
    out = tmp_path / "cli.jsonl"
    r = runner.invoke(app, ["export", run_dir, "-o", str(out), "--lineage"])
    assert r.exit_code == 0, r.output
    assert "Wrote 5 examples" in r.output and "SIMULATED" in r.output
    r = runner.invoke(app, ["export", run_dir, "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["lineage", run_dir, str(tmp_path / "t.graphml"), "--accepted-only"])
    assert r.exit_code == 0 and "8 nodes" in r.output


# ---- formats, dataset card, stdout, and outputs that cannot be written ------------------------

def _card(folder):
    return (folder / "README.md").read_text(encoding="utf-8")


def test_card_says_simulated_and_holds_the_run_facts(db, tmp_path):
    out = tmp_path / "data.jsonl"
    export_run(db, out)
    card = _card(tmp_path)
    assert "SIMULATED" in card and "REAL" not in card.replace("REAL model", "")
    assert "gpt-4o-mini" in card and "| strategy | tree |" in card
    assert "--max-usd 0.005" in card and "max_usd_micro" not in card  # caps under their flag names
    assert "| label-not-in-options | 1 |" in card and "| accepted / rejected | 5 / 4 |" in card
    assert "$0.00298 over 7 calls" in card


def test_card_of_a_real_run_says_real(tmp_path):
    with RunStore.open(build_run(tmp_path / "real", simulated=False, run_id="run-real"), readonly=True) as real:
        export_run(real, tmp_path / "real.csv")
    card = _card(tmp_path)
    assert "**REAL** model output: `gpt-4o-mini`" in card and "SIMULATED" not in card


def test_csv_and_parquet_hold_the_same_rows(db, tmp_path):
    import csv

    pq = pytest.importorskip("pyarrow.parquet")
    want = [e.to_dict() for e in db.examples()]
    assert export_run(db, tmp_path / "d.csv", lineage=True) == len(want)
    with (tmp_path / "d.csv").open(newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert [{**{k: r[k] for k in ("question", "context", "label")}, "options": json.loads(r["options"])} for r in got] \
        == [{**w, "context": w["context"] or ""} for w in want]
    assert {r["treegen_node_id"] for r in got} == {"4", "5", "7", "9", "10"}
    assert export_run(db, tmp_path / "d.parquet", lineage=True) == len(want)
    rows = pq.read_table(tmp_path / "d.parquet").to_pylist()
    assert [{k: r[k] for k in ("question", "context", "options", "label")} for r in rows] == want
    assert rows[3]["_treegen"]["parent_id"] == 4 and rows[3]["_treegen"]["simulated"] is True


def test_hf_dataset_folder_round_trip(db, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    assert export_run(db, out) == SCENARIO["accepted"]  # no extension: a dataset folder
    ds = datasets.load_from_disk(str(out))
    assert ds.num_rows == SCENARIO["accepted"] and ds[0] == db.examples()[0].to_dict()
    assert "SIMULATED" in _card(out) and json.loads((out / "treegen_meta.json").read_text())["simulated"] is True
    with pytest.raises(InputError, match="--force"):
        export_run(db, out)
    assert export_run(db, out, force=True, include_seeds=True) == SCENARIO["accepted"] + SCENARIO["seeds"]
    assert datasets.load_from_disk(str(out)).num_rows == 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_format_flag_and_unknown_extension(db, tmp_path):
    assert export_run(db, tmp_path / "rows.txt", fmt="jsonl") == SCENARIO["accepted"]
    with pytest.raises(InputError, match="--format"):
        export_run(db, tmp_path / "rows.txt2")


def test_full_disk_leaves_nothing(db, tmp_path, monkeypatch):
    import errno

    import treegen.export as ex

    def fill(fh, items):
        fh.write("partial row\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex, "write_jsonl_to", fill)
    with pytest.raises(ex.OutputError, match="disk is full") as info:
        export_run(db, tmp_path / "data.jsonl")
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_cli_export_formats_stdout_and_errors(db, tmp_path, monkeypatch):
    from treegen.cli import app

    runner = CliRunner()
    run_dir = str(db.run_dir)
    r = runner.invoke(app, ["export", run_dir, "-o", "-"])
    assert r.exit_code == 0, r.output
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    assert [json.loads(x) for x in lines] == [e.to_dict() for e in db.examples()]
    r = runner.invoke(app, ["export", run_dir, "-o", str(tmp_path / "no" / "such" / "d.jsonl")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["export", run_dir, "-o", str(tmp_path / "d.parquet")])
    assert r.exit_code == 0 and "parquet" in r.output and (tmp_path / "README.md").exists()
    r = runner.invoke(app, ["lineage", run_dir, str(tmp_path / "missing" / "t.graphml")])
    assert r.exit_code == 2 and "does not exist" in r.output
    # Without a token the push stops before any network access, with what to do.
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    r = runner.invoke(app, ["export", run_dir, "--push-to-hub", "someone/data"])
    assert r.exit_code == 2 and "huggingface-cli login" in r.output


def test_a_readme_treegen_did_not_write_is_kept(db, tmp_path):
    (tmp_path / "README.md").write_text("my notes\n")
    with pytest.raises(InputError, match="not written by treegen"):
        export_run(db, tmp_path / "data.jsonl")
    assert (tmp_path / "README.md").read_text() == "my notes\n" and not (tmp_path / "data.jsonl").exists()
    export_run(db, tmp_path / "data.jsonl", force=True)
    export_run(db, tmp_path / "data.csv")  # our own card is replaced by the next export's
    assert "data.csv" not in _card(tmp_path) and "(csv;" in _card(tmp_path)
