"""Chakraborty et al. (2021) clustering-based filtering (their Algorithm 1), on fixed features.

The rule implemented, exactly as in their section 4.1.1:
  1. K-means on the target representations Z_t gives centres z_1..z_K;
  2. every source example i gets distances d_k^i = ||f(x_s^i) - z_k||_p (p = 1 or 2, Eqn. 1);
  3. its score is AggOp over k: the mean distance (Eqn. 2, "Clustering (Avg)") or the minimum
     distance (Eqn. 3, "Clustering (Min)");
  4. BOTTOM(D_s, N', c): the N' lowest-scoring source examples are kept, each once.
The two aggregations differ in kind: "min" keeps source points near any target cluster, "mean"
favours points near the middle of all centres, which need not be near any target image.

Chakraborty et al. train the feature extractor f on the target dataset itself, and so does the
pipeline's `kmeans` method (`selection.example_level`: a small CNN trained on the target's labels);
the functions here take features from whatever model the caller runs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import ot
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans, MiniBatchKMeans

from selection.domain_classifier import select_top_examples

_SCORE_CHUNK = 65_536


def _distances(x: np.ndarray, centres: np.ndarray, p: float) -> np.ndarray:
    """L_p distances [len(x), K]; p = 2 through a matrix product (several times faster than cdist)."""
    if p == 2:
        return ot.dist(x, centres, metric="euclidean")
    return cdist(x, centres, metric="minkowski", p=p)


def target_centroids(
    target_features: np.ndarray, n_clusters: int, *, seed: int = 0, minibatch: bool = False
) -> np.ndarray:
    """K-means centres [K, D] of the target features (MiniBatchKMeans for large targets)."""
    if not 0 < n_clusters <= len(target_features):
        raise ValueError(f"n_clusters={n_clusters} must be in [1, {len(target_features)}]")
    kind = MiniBatchKMeans if minibatch else KMeans
    model = kind(n_clusters=n_clusters, n_init=10, random_state=seed)
    return model.fit(np.asarray(target_features, dtype=np.float64)).cluster_centers_


def kmeans_filter_scores(
    source_features: np.ndarray,
    centroids: np.ndarray,
    *,
    aggregate: str = "min",  # "min" | "mean", checked below (config values are str)
    p: float = 2,
) -> np.ndarray:
    """c_s^i = AggOp_k ||f(x_s^i) - z_k||_p for every source example (lower is closer to the target)."""
    if aggregate not in ("min", "mean"):
        raise ValueError(f"aggregate must be 'min' or 'mean', got {aggregate!r}")
    reduce = np.min if aggregate == "min" else np.mean
    centroids = np.asarray(centroids, dtype=np.float64)
    n = len(source_features)
    scores = np.empty(n, dtype=np.float64)
    for start in range(0, n, _SCORE_CHUNK):
        chunk = np.asarray(source_features[start : start + _SCORE_CHUNK], dtype=np.float64)
        distances = _distances(chunk, centroids, p)
        scores[start : start + _SCORE_CHUNK] = reduce(distances, axis=1)
    return scores


def kmeans_filter_select(
    source_features: np.ndarray,
    target_features: np.ndarray,
    example_ids: list[bytes] | np.ndarray,
    size: int,
    n_clusters: int,
    *,
    aggregate: Literal["min", "mean"] = "min",
    p: float = 2,
    seed: int = 0,
    minibatch: bool = False,
) -> dict[bytes, int]:
    """Algorithm 1 end to end: the `size` source examples with the lowest score, once each."""
    centroids = target_centroids(target_features, n_clusters, seed=seed, minibatch=minibatch)
    scores = kmeans_filter_scores(source_features, centroids, aggregate=aggregate, p=p)
    return select_top_examples(-scores, example_ids, size)
