"""The search tree of a run as a networkx graph: who was generated from whom, and at what cost.

An edge goes from the in-context example a candidate was generated from (``parent_id``) to
the candidate. Seeds are the roots.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import networkx as nx

from treegen.export import atomic_write, check_destination
from treegen.store import NodeStatus, RunStore


def build_tree(store: RunStore, include_rejected: bool = False) -> nx.DiGraph:
    """The run's tree; node attributes: depth, status, strategy, cost_share_micro, label, question.

    Attributes that are unknown (a rejected candidate that was not even JSON has no question)
    are left out rather than set to None, so that the graph can be written as GraphML.
    """
    run = store.run()
    G = nx.DiGraph(run_id=run["id"], simulated=bool(run["simulated"]), model=run["model"] or "")
    statuses = (NodeStatus.SEED, NodeStatus.ACCEPTED) + ((NodeStatus.REJECTED,) if include_rejected else ())
    rows = store.nodes(statuses)
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


def export_graphml(store: RunStore, path: str | Path, include_rejected: bool = True, force: bool = False) -> int:
    """Write the tree as GraphML; returns the number of nodes written.

    Written to a temporary file beside ``path`` and renamed: a missing or unwritable folder or
    a full disk raises OutputError (exit 2) and leaves nothing behind.
    """
    path = Path(path)
    check_destination(path, force)
    G = build_tree(store, include_rejected=include_rejected)
    atomic_write(path, lambda tmp: nx.write_graphml(G, tmp))
    return G.number_of_nodes()
