"""The in-loop near-duplicate index: exact against brute force, growth, thresholds, real texts."""

from __future__ import annotations

import numpy as np
import pytest

from treegen.embedders import get_embedder
from treegen.errors import ConfigError
from treegen.neardup import NearDuplicateIndex


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_max_similarity_matches_brute_force_across_growth():
    rng = np.random.default_rng(0)
    stored = _unit_rows(rng, 1000, 24)
    index = NearDuplicateIndex(24, 0.9)
    # Uneven chunks force several doublings of the preallocated matrix (initial capacity 256).
    for start in range(0, 1000, 37):
        index.add(stored[start : start + 37])
    assert len(index) == 1000
    queries = _unit_rows(rng, 50, 24)
    expected = (queries @ stored.T).max(axis=1)
    np.testing.assert_allclose(index.max_similarity(queries), expected, rtol=0, atol=1e-5)


def test_is_near_duplicate_uses_threshold():
    index = NearDuplicateIndex(3, 0.9)
    assert index.is_near_duplicate(np.array([1.0, 0.0, 0.0])) == (False, float("-inf"))  # empty index
    index.add(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    near, sim = index.is_near_duplicate(np.array([1.0, 0.0, 0.0]))
    assert near and sim == pytest.approx(1.0)
    close = np.array([0.95, np.sqrt(1 - 0.95**2), 0.0])  # cosine 0.95 with the first row
    assert index.is_near_duplicate(close)[0]
    far = np.array([0.8, 0.0, 0.6])  # cosine 0.8
    near, sim = index.is_near_duplicate(far)
    assert not near and sim == pytest.approx(0.8)


def test_bad_dimension_and_threshold_are_config_errors():
    with pytest.raises(ConfigError, match="threshold"):
        NearDuplicateIndex(8, 1.5)
    with pytest.raises(ConfigError, match="threshold"):
        NearDuplicateIndex(8, 0.0)
    index = NearDuplicateIndex(8, 0.9)
    with pytest.raises(ConfigError, match="dimension 8"):
        index.add(np.ones((2, 4), dtype=np.float32))


def test_real_paraphrase_is_caught_and_other_question_is_not(strategyqa_pool):
    from treegen.task import load_examples

    examples, _ = load_examples(strategyqa_pool)
    emb = get_embedder("hashing")
    accepted = [e.question for e in examples[:200]]
    index = NearDuplicateIndex(emb.dim, 0.8)
    index.add(emb.embed(accepted))
    copy_with_typo_case = accepted[10].upper()  # the lexical embedder lower-cases: identical
    reworded = accepted[20].rstrip("?") + " at all?"
    unrelated = examples[500].question
    sims = index.max_similarity(emb.embed([copy_with_typo_case, reworded, unrelated]))
    assert sims[0] == pytest.approx(1.0, abs=1e-5)
    assert sims[1] >= 0.8
    assert sims[2] < 0.8
