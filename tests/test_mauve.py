"""MAUVE: known answers, and agreement with the reference implementation (mauve-text, test only)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from treegen.datasets import load_split
from treegen.embedders import HashingEmbedder, get_embedder
from treegen.errors import InputError
from treegen.mauve import compute_mauve, divergence_curve, mauve_from_histograms
from treegen.metrics import item_text


def _features(task: str, split: str, n: int, skip: int = 0, dim: int | None = None) -> np.ndarray:
    examples, _fmt, _note = load_split(task, split, limit=n + skip)
    emb = HashingEmbedder(dim) if dim else get_embedder("hashing")
    return emb.embed([item_text(e) for e in examples[skip:]])


def test_histogram_part_known_answers():
    p = np.array([0.2, 0.3, 0.5])
    assert mauve_from_histograms(p, p) == pytest.approx(1.0, abs=1e-12)
    # Disjoint supports: every KL on the curve is large, the area is close to 0.
    assert mauve_from_histograms(np.array([1.0, 0.0]), np.array([0.0, 1.0])) < 0.02
    # Closer histograms score higher.
    q_near, q_far = np.array([0.25, 0.3, 0.45]), np.array([0.6, 0.3, 0.1])
    assert mauve_from_histograms(p, q_near) > mauve_from_histograms(p, q_far)
    curve = divergence_curve(p, q_far)
    assert curve.shape == (27, 2) and np.all((curve >= 0) & (curve <= 1))


def test_set_against_itself_is_one_and_disjoint_topics_low(datasets_dir):
    csqa = _features("csqa", "dev", 200)
    csqa_other = _features("csqa", "dev", 200, skip=200)
    pubmed = _features("pubmedqa", "test", 200)  # biomedical abstracts vs everyday questions
    assert compute_mauve(csqa, csqa, max_dims=64).mauve == pytest.approx(1.0, abs=1e-9)
    same = compute_mauve(csqa, csqa_other, max_dims=64).mauve
    far = compute_mauve(csqa, pubmed, max_dims=64).mauve
    assert same > 0.9
    assert far < 0.1


def test_too_few_items_is_an_input_error():
    with pytest.raises(InputError, match="at least 2"):
        compute_mauve(np.ones((1, 4)), np.ones((5, 4)))


def _import_reference():
    """mauve-text, without the torch + transformers it imports only to featurise text (11 s):
    we give it features. If torch is already loaded it is reused."""
    import sys

    import scipy.stats  # noqa: F401 - loaded before torch is hidden: scipy probes sys.modules["torch"]
    import sklearn.decomposition  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import sklearn.preprocessing  # noqa: F401

    blocked = [m for m in ("torch", "transformers") if m not in sys.modules]
    for m in blocked:
        sys.modules[m] = None  # type: ignore[assignment]  # makes `import m` raise ImportError
    try:
        return pytest.importorskip("mauve")
    finally:
        for m in blocked:
            sys.modules.pop(m, None)


def test_agrees_with_reference_implementation(datasets_dir):
    """Same precomputed features into mauve-text and into ours.

    1. The deterministic half (histograms -> divergence curve -> area) must agree to 1e-9:
       we feed mauve-text's own histograms to ours.
    2. The quantisation differs (faiss k-means in mauve-text, scikit-learn k-means++ with 5
       restarts here), so whole-pipeline scores cannot agree exactly. mauve-text's own score
       moves with its seed (0.41 to 0.64 over 3 seeds on the related-task pair, measured), so
       the check is: our mean over 3 seeds lies within the range mauve-text gives over 8 seeds,
       widened by 0.05, and the two means differ by at most 0.1; the pairs rank the same.
       A wrong curve, scaling factor or PCA rule moves scores by more (see docs/metrics.md).
    """
    ref = _import_reference()
    import faiss

    faiss.omp_set_num_threads(1)  # several OpenMP threads on 2 shared cores: 14x slower
    a = _features("csqa", "dev", 300, dim=128)
    b = _features("csqa", "dev", 300, skip=300, dim=128)
    c = _features("riddle_sense", "dev", 300, dim=128)
    pairs = {"same distribution": (a, b), "related task": (a, c)}
    ours, theirs = {}, {}
    from threadpoolctl import threadpool_limits

    # One BLAS thread, as treegen.mauve does: mauve-text's PCA is 18x slower oversubscribed.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        for name, (p, q) in pairs.items():
            outs = [ref.compute_mauve(p_features=p, q_features=q, seed=s, verbose=False) for s in range(8)]
            for out in outs:
                assert mauve_from_histograms(out.p_hist, out.q_hist) == pytest.approx(out.mauve, abs=1e-9)
            theirs[name] = [o.mauve for o in outs]
            ours[name] = float(np.mean([compute_mauve(p, q, seed=s).mauve for s in range(3)]))
    for name in pairs:
        lo, hi = min(theirs[name]) - 0.05, max(theirs[name]) + 0.05
        assert lo <= ours[name] <= hi, (name, ours[name], theirs[name])
        assert abs(ours[name] - np.mean(theirs[name])) <= 0.1, (name, ours[name], theirs[name])
    assert ours["same distribution"] > ours["related task"]
    assert np.mean(theirs["same distribution"]) > np.mean(theirs["related task"])
