"""Same seed and config, same export at any concurrency (the reorder buffer, request seeds by
number, tree levels, novelty waves and round-robin chains). Simulator on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

import treegen


@pytest.mark.parametrize("strategy", ["tree", "random", "novelty", "naive"])
def test_same_export_at_concurrency_1_8_and_32(tmp_path: Path, yesno_seeds: Path, strategy: str) -> None:
    exports = {}
    for c in (1, 8, 32):
        result = treegen.run(yesno_seeds, backend="sim", strategy=strategy, target=30, max_usd=1, concurrency=c,
                             out=tmp_path, name=f"{strategy}-c{c}", embedder="hashing", seed=3, sim_latency_ms=5)
        assert result.status == "completed" and result.accepted == 30
        exports[c] = [(e.question, e.label) for e in treegen.open_run(result.run_dir).examples()]
    assert exports[1] == exports[8] == exports[32]
    assert len(set(exports[1])) == 30


def test_another_seed_makes_another_dataset(tmp_path: Path, yesno_seeds: Path) -> None:
    a = treegen.run(yesno_seeds, backend="sim", target=20, max_usd=1, out=tmp_path, name="s1", seed=1,
                    embedder="hashing")
    b = treegen.run(yesno_seeds, backend="sim", target=20, max_usd=1, out=tmp_path, name="s2", seed=2,
                    embedder="hashing")
    qa = [e.question for e in treegen.open_run(a.run_dir).examples()]
    qb = [e.question for e in treegen.open_run(b.run_dir).examples()]
    assert qa != qb
