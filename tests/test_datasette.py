"""A run database is a record people browse: Datasette opens it and shows the views."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from factories import SCENARIO, build_run


def test_datasette_shows_the_runs_views(tmp_path: Path) -> None:
    datasette_app = pytest.importorskip("datasette.app")
    path = build_run(tmp_path / "r")

    async def browse() -> tuple[dict, list, list]:
        ds = datasette_app.Datasette([str(path)], immutables=[])
        db = (await ds.client.get("/treegen.json")).json()
        by_depth = (await ds.client.get("/treegen/cost_by_depth.json?_shape=array")).json()
        accepted = (await ds.client.get("/treegen/accepted_examples.json?_shape=array")).json()
        return db, by_depth, accepted

    db, by_depth, accepted = asyncio.run(browse())
    views = {v["name"] for v in db["views"]}
    assert {"accepted_examples", "cost_by_depth", "cost_by_strategy", "calls_by_status"} <= views
    assert sum(r["spent_micro"] for r in by_depth) == SCENARIO["spent_micro"]
    assert len(accepted) == SCENARIO["accepted"]
    nodes = next(t for t in db["tables"] if t["name"] == "nodes")
    assert any(fk["other_table"] == "nodes" and fk["column"] == "parent_id" for fk in nodes["foreign_keys"]["outgoing"])
