"""MAUVE (Pillutla et al., NeurIPS 2021; JMLR 2023), implemented from the published algorithm.

The reference implementation, ``mauve-text``, is GPL-3.0 and treegen is MIT, so it is not a
dependency: this module follows the paper's steps with numpy and scikit-learn, and
``tests/test_mauve.py`` checks it against ``mauve-text`` (a test-only dependency) on the same
precomputed features.

1. L2-normalise the rows of P (created) and Q (reference) features and stack them.
2. PCA on the union; keep the fewest leading components explaining >= 90 % of the variance.
3. k-means on the union (k = round(min(|P|, |Q|) / 10), at least 2, by default), best of
   several restarts; each point's cluster is its bucket.
4. P and Q become histograms over the k buckets.
5. Divergence curve: for mixture weights w on a grid of 25 points in (0, 1),
   R_w = w P + (1 - w) Q and the point (exp(-c KL(Q || R_w)), exp(-c KL(P || R_w))), c = 5,
   plus the end points (0, 1) and (1, 0).
6. MAUVE = area under that curve (trapezoid rule; averaged over integrating along x and along
   y, which is the same number for a monotone curve). 1 means identical histograms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from treegen.errors import InputError

SCALING_FACTOR = 5.0
GRID_SIZE = 25
EXPLAINED_VARIANCE = 0.9


@dataclass(frozen=True)
class MauveResult:
    mauve: float
    num_buckets: int
    pca_dims: int
    p_hist: np.ndarray
    q_hist: np.ndarray


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    """KL(a || b) for histograms; b > 0 wherever a > 0 for the mixtures used here."""
    mask = a > 0
    if np.any(b[mask] <= 0):
        return float("inf")
    return float(np.sum(a[mask] * np.log(a[mask] / b[mask])))


def divergence_curve(
    p_hist: np.ndarray, q_hist: np.ndarray, grid_size: int = GRID_SIZE, scaling_factor: float = SCALING_FACTOR
) -> np.ndarray:
    """The (m + 2, 2) points of the divergence frontier, end points included, sorted by w."""
    p = np.asarray(p_hist, dtype=np.float64)
    q = np.asarray(q_hist, dtype=np.float64)
    # The grid stays inside (0, 1) so every mixture covers the support of both P and Q.
    weights = np.linspace(1e-6, 1 - 1e-6, grid_size)
    points = [(0.0, 1.0)]
    for w in weights:
        r = w * p + (1 - w) * q
        points.append((np.exp(-scaling_factor * _kl(q, r)), np.exp(-scaling_factor * _kl(p, r))))
    points.append((1.0, 0.0))
    return np.asarray(points, dtype=np.float64)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def mauve_from_histograms(
    p_hist: np.ndarray, q_hist: np.ndarray, grid_size: int = GRID_SIZE, scaling_factor: float = SCALING_FACTOR
) -> float:
    """Area under the divergence curve of two histograms over the same buckets."""
    curve = divergence_curve(p_hist, q_hist, grid_size, scaling_factor)
    x, y = curve[:, 0], curve[:, 1]
    by_x, by_y = np.argsort(x, kind="stable"), np.argsort(y, kind="stable")
    return 0.5 * (_trapezoid(x[by_x], y[by_x]) + _trapezoid(y[by_y], x[by_y]))


def quantise(
    p_features: np.ndarray,
    q_features: np.ndarray,
    num_buckets: int | None = None,
    seed: int = 0,
    n_init: int = 5,
    max_iter: int = 300,
    explained_variance: float = EXPLAINED_VARIANCE,
    max_dims: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(P histogram, Q histogram, number of buckets, PCA dimensions kept).

    ``max_dims`` caps the PCA dimensions (None: the paper's rule alone). Wide lexical features
    (2,048-d hashing) need over 1,000 dimensions for 90 % of the variance, where k-means is slow.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    p = np.asarray(p_features, dtype=np.float64)
    q = np.asarray(q_features, dtype=np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise InputError(f"MAUVE needs two feature matrices of the same width, got {p.shape} and {q.shape}.")
    if len(p) < 2 or len(q) < 2:
        raise InputError(f"MAUVE needs at least 2 items on each side, got {len(p)} and {len(q)}.")
    if num_buckets is None:
        num_buckets = max(2, int(round(min(len(p), len(q)) / 10)))
    data = np.vstack([q, p])
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = data / np.where(norms > 0, norms, 1.0)
    # One BLAS/OpenMP thread: on a shared 2-core machine more threads oversubscribe and k-means
    # runs several times slower (measured: 1.1 s with one thread, 6.6 s with two, under load).
    with threadpool_limits(limits=1):
        if max_dims is not None and max_dims < min(data.shape):
            pca = PCA(n_components=max_dims, svd_solver="randomized", random_state=seed)
        else:
            pca = PCA(n_components=None, random_state=seed)
        reduced = pca.fit_transform(data)
        # Ratios are of the total variance of the data, also when only max_dims components are fitted.
        cumulative = np.cumsum(pca.explained_variance_ratio_)
        reached = np.nonzero(cumulative >= explained_variance)[0]
        dims = int(reached[0]) + 1 if len(reached) else len(cumulative)
        reduced = np.ascontiguousarray(reduced[:, :dims], dtype=np.float32)
        # Never more buckets than distinct points: k-means would leave the extra ones empty anyway.
        n_distinct = len(np.unique(reduced.round(6), axis=0))
        k = max(1, min(num_buckets, n_distinct))
        if k == 1:
            labels = np.zeros(len(reduced), dtype=np.int64)
        else:
            km = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter, random_state=seed)
            labels = km.fit_predict(reduced)
    q_counts = np.bincount(labels[: len(q)], minlength=k).astype(np.float64)
    p_counts = np.bincount(labels[len(q) :], minlength=k).astype(np.float64)
    return p_counts / p_counts.sum(), q_counts / q_counts.sum(), k, dims


def compute_mauve(
    p_features: np.ndarray,
    q_features: np.ndarray,
    num_buckets: int | None = None,
    seed: int = 0,
    n_init: int = 5,
    max_iter: int = 300,
    scaling_factor: float = SCALING_FACTOR,
    grid_size: int = GRID_SIZE,
    max_dims: int | None = None,
) -> MauveResult:
    """MAUVE between P (e.g. created set) and Q (reference) given their feature rows."""
    p_hist, q_hist, k, dims = quantise(p_features, q_features, num_buckets, seed, n_init, max_iter, max_dims=max_dims)
    value = mauve_from_histograms(p_hist, q_hist, grid_size, scaling_factor)
    return MauveResult(mauve=float(value), num_buckets=k, pca_dims=dims, p_hist=p_hist, q_hist=q_hist)
