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
from treegen.store import open_run, run_examples


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return open_run(build_run(tmp_path_factory.mktemp("lin") / "run-sim"))


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
    assert [example_from_dict(r, fmt) for r in rows] == run_examples(db)
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
    real = open_run(build_run(tmp_path / "real", simulated=False, run_id="run-real"))
    out = tmp_path / "real.jsonl"
    export_run(real, out, lineage=True)
    assert json.loads(meta_path(out).read_text())["simulated"] is False
    assert all(json.loads(x)["_treegen"]["simulated"] is False for x in out.read_text().splitlines())


def test_cli_export_and_lineage(db, tmp_path):
    from treegen.cli import app
    from treegen.cli_reports import register

    register(app)
    runner = CliRunner()
    run_dir = db.execute("pragma database_list").fetchone()[2].rsplit("/", 1)[0]
    out = tmp_path / "cli.jsonl"
    r = runner.invoke(app, ["export", run_dir, "-o", str(out), "--lineage"])
    assert r.exit_code == 0, r.output
    assert "Wrote 5 examples" in r.output and "SIMULATED" in r.output
    r = runner.invoke(app, ["export", run_dir, "-o", str(out)])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["lineage", run_dir, str(tmp_path / "t.graphml"), "--accepted-only"])
    assert r.exit_code == 0 and "8 nodes" in r.output
