"""The search tree of a run as a networkx graph: who was generated from whom, and at what cost.

An edge goes from the in-context example a candidate was generated from (``parent_id``) to
the candidate. Seeds are the roots.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import networkx as nx
import sqlite_utils

from treegen.errors import InputError
from treegen.store import run_row


def build_tree(db: sqlite_utils.Database, include_rejected: bool = False) -> nx.DiGraph:
    """The run's tree; node attributes: depth, status, strategy, cost_share_micro, label, question.

    Attributes that are unknown (a rejected candidate that was not even JSON has no question)
    are left out rather than set to None, so that the graph can be written as GraphML.
    """
    run = run_row(db)
    G = nx.DiGraph(run_id=run["id"], simulated=bool(run["simulated"]), model=run["model"] or "")
    statuses = ("seed", "accepted", "rejected") if include_rejected else ("seed", "accepted")
    marks = ",".join("?" for _ in statuses)
    rows = list(db.query(f"select * from nodes where status in ({marks}) order by id", statuses))
    for r in rows:
        attrs: dict[str, Any] = {
            "depth": r["depth"],
            "status": r["status"],
            "strategy": r["strategy"] or "",
            "cost_share_micro": r["cost_share_micro"] or 0,
            "label": r["label"],
            "question": r["question"],
            "root_id": r["root_id"],
            "call_id": r["call_id"],
            "reason": r["reason"],
        }
        G.add_node(r["id"], **{k: v for k, v in attrs.items() if v is not None})
    for r in rows:
        # A parent outside the graph would be a broken record; never invent an empty node for it.
        if r["parent_id"] is not None and r["parent_id"] in G:
            G.add_edge(r["parent_id"], r["id"])
    return G


def subtree_cost(G: nx.DiGraph, node_id: int) -> int:
    """Micro-dollars: the node's own share plus every descendant's (rejected ones too if in G)."""
    nodes = nx.descendants(G, node_id) | {node_id}
    return sum(G.nodes[n].get("cost_share_micro", 0) for n in nodes)


def subtree_accepted(G: nx.DiGraph, node_id: int) -> int:
    """Accepted examples in the subtree of ``node_id``, the node itself included."""
    nodes = nx.descendants(G, node_id) | {node_id}
    return sum(1 for n in nodes if G.nodes[n].get("status") == "accepted")


def depth_profile(G: nx.DiGraph) -> list[dict[str, Any]]:
    """Per depth: nodes, seeds, accepted, rejected, cost, and how many accepted children each
    kept node (seed or accepted) at that depth has on average (the tree's branching)."""
    rows: dict[int, dict[str, Any]] = defaultdict(
        lambda: {"nodes": 0, "seeds": 0, "accepted": 0, "rejected": 0, "cost_micro": 0, "accepted_children": 0}
    )
    for n, a in G.nodes(data=True):
        r = rows[a.get("depth", 0)]
        r["nodes"] += 1
        status = a.get("status")
        if status in ("seed", "accepted", "rejected"):
            r[{"seed": "seeds"}.get(status, status)] += 1
        r["cost_micro"] += a.get("cost_share_micro", 0)
        if status in ("seed", "accepted"):
            r["accepted_children"] += sum(1 for c in G.successors(n) if G.nodes[c].get("status") == "accepted")
    out = []
    for depth in sorted(rows):
        r = rows[depth]
        kept = r["seeds"] + r["accepted"]
        out.append(
            {
                "depth": depth,
                **{k: v for k, v in r.items() if k != "accepted_children"},
                "mean_accepted_children": r["accepted_children"] / kept if kept else None,
            }
        )
    return out


def export_graphml(db: sqlite_utils.Database, path: str | Path, include_rejected: bool = True, force: bool = False) -> int:
    """Write the tree as GraphML (atomically); returns the number of nodes written."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} already exists. Choose another file name, or pass --force to overwrite it.")
    G = build_tree(db, include_rejected=include_rejected)
    tmp = path.with_name(path.name + ".part")
    try:
        nx.write_graphml(G, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return G.number_of_nodes()
