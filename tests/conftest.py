"""Shared fixtures: the real benchmark datasets, seed files, a simulator on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("TREEGEN_DATA_DIR", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"benchmark datasets not found at {DATASETS} (set TREEGEN_DATA_DIR)")
    return DATASETS


@pytest.fixture(scope="session")
def strategyqa_pool(datasets_dir) -> Path:
    return datasets_dir / "yesno_close" / "strategyqa" / "train.jsonl"


@pytest.fixture
def yesno_seeds(tmp_path, strategyqa_pool) -> Path:
    """Two real StrategyQA training examples as seeds."""
    lines = strategyqa_pool.read_text(encoding="utf-8").splitlines()[:2]
    path = tmp_path / "seeds.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def csqa_seeds(tmp_path, datasets_dir) -> Path:
    line = (datasets_dir / "mcqa_5" / "csqa" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    path = tmp_path / "csqa_seed.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
