"""Export the accepted examples of a run in the unified format, with optional lineage.

A sidecar ``<out>.meta.json`` is always written beside the export, so that a simulated run's
data is marked as simulated even in a plain export without lineage.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils

from treegen.errors import InputError
from treegen.task import write_jsonl
from treegen.store import node_example, run_row, utcnow


def meta_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".meta.json")


def _rows(db: sqlite_utils.Database, lineage: bool, include_seeds: bool, simulated: bool) -> Iterator[dict[str, Any]]:
    statuses = ("seed", "accepted") if include_seeds else ("accepted",)
    marks = ",".join("?" for _ in statuses)
    for r in db.query(f"select * from nodes where status in ({marks}) order by id", statuses):
        row = node_example(r).to_dict()
        if lineage:
            row["_treegen"] = {
                "node_id": r["id"],
                "parent_id": r["parent_id"],
                "root_id": r["root_id"],
                "depth": r["depth"],
                "status": r["status"],
                "strategy": r["strategy"],
                "cost_share_micro": r["cost_share_micro"] or 0,
                "call_id": r["call_id"],
                "simulated": simulated,
            }
        yield row


def export_run(
    db: sqlite_utils.Database,
    out_path: str | Path,
    lineage: bool = False,
    include_seeds: bool = False,
    force: bool = False,
) -> int:
    """Write the run's accepted examples (and seeds if asked) as JSONL; returns the row count.

    Rows are ``{question, context, options, label}``; with ``lineage`` each also has a
    ``_treegen`` object (node, parent, root, depth, strategy, cost share, call, simulated).
    Refuses to overwrite an existing file unless ``force``.
    """
    out_path = Path(out_path)
    if out_path.exists() and not force:
        raise InputError(f"{out_path} already exists. Choose another file name, or pass --force to overwrite it.")
    if out_path.is_dir():
        raise InputError(f"{out_path} is a folder. Give a file name, e.g. {out_path / 'data.jsonl'}.")
    if not out_path.parent.is_dir():
        raise InputError(f"The folder {out_path.parent} does not exist. Create it first, or export elsewhere.")
    run = run_row(db)
    simulated = bool(run["simulated"])
    n = write_jsonl(out_path, _rows(db, lineage, include_seeds, simulated))
    meta = {
        "run_id": run["id"],
        "simulated": simulated,
        "model": run["model"],
        "strategy": run["strategy"],
        "task_format": run["task_format"],
        "n": n,
        "include_seeds": include_seeds,
        "lineage": lineage,
        "exported_at": utcnow(),
    }
    mp = meta_path(out_path)
    tmp = mp.with_name(mp.name + ".part")
    try:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, mp)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
