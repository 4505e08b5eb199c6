"""The Python API: the same run as the CLI, from a script or from a notebook's running loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import treegen
from treegen.errors import InputError


def test_run_from_a_list_of_dicts_and_read_it_back(tmp_path: Path, yesno_seeds: Path) -> None:
    seeds = [json.loads(line) for line in yesno_seeds.read_text().splitlines()]
    result = treegen.run(seeds, backend="sim", target=12, max_usd=0.05, out=tmp_path, name="api",
                         embedder="hashing")
    assert result.status == "completed" and result.accepted == 12 and result.simulated
    assert result.run_dir == tmp_path / "api" and 0 < result.spent_usd < 0.05
    run = treegen.open_run(result.run_dir)
    assert len(run.examples()) == 12 and run.calls() and run.run()["strategy"] == "tree"
    assert treegen.resume(result.run_dir, target=20).accepted == 20


def test_run_works_inside_a_running_event_loop_as_in_a_notebook(tmp_path: Path, yesno_seeds: Path) -> None:
    async def notebook_cell() -> tuple[str, str]:
        plain = treegen.run(yesno_seeds, backend="sim", target=5, max_usd=0.05, out=tmp_path, name="nb1",
                            embedder="hashing")
        awaited = await treegen.arun(yesno_seeds, backend="sim", target=5, max_usd=0.05, out=tmp_path, name="nb2",
                                     embedder="hashing")
        return plain.status, awaited.status

    assert asyncio.run(notebook_cell()) == ("completed", "completed")


def test_options_are_checked_before_anything_is_written(tmp_path: Path, yesno_seeds: Path) -> None:
    out = tmp_path / "runs"
    with pytest.raises(InputError, match="Unknown option"):
        treegen.run(yesno_seeds, backend="sim", target=5, max_usd=0.05, out=out, max_dollars=3)
    with pytest.raises(InputError, match="--k"):
        treegen.run(yesno_seeds, backend="sim", target=5, k=0, out=out)
    assert not out.exists()
    assert treegen.__version__ and "run" in treegen.__all__
