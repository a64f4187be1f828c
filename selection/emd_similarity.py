"""Cui et al. (2018) domain similarity by Earth Mover's Distance, and their source-category selection.

Cui et al., section 4: every category is the mean of its images' penultimate-layer features, weighted
by its share of the domain's images; the ground distance is Euclidean; d(S, T) = EMD(S, T) and
sim(S, T) = exp(-gamma * d(S, T)) with gamma = 0.01. Section 4.2 selects source categories greedily:
each source category s_i alone, {(s_i, 1)}, is scored by sim({(s_i, 1)}, T) and the top k are kept.

Target labels: Cui et al. represent the target by its class means, so `target_labels` is accepted
here (unlike Ngiam et al.'s importance weights, which never read target labels). Without target
labels every target image is its own unit of mass 1/M, which is the image-level EMD that the class
means approximate (the LP then has one variable per source class and target image: fine for
`label_similarities`, which needs no LP, but slow for a full EMD against thousands of images).

Labels are either a 1-D int array (one label per example) or a 2-D multi-hot array [N, L] (the
multi-label source case): an example with several labels adds its features to each of their means
and counts once towards each label's weight; weights are then renormalised to sum to one.
"""

from __future__ import annotations

import numpy as np
import ot
import scipy.sparse

CUI_GAMMA = 0.01
_LABEL_CHUNK = 512


def _membership(labels: np.ndarray, num_labels: int | None) -> scipy.sparse.csr_matrix:
    """Sparse [L, N] 0/1 matrix: entry (l, i) is 1 when example i carries label l."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.size and labels.min() < 0:
            raise ValueError("labels must be non-negative")
        n = labels.shape[0]
        size = int(labels.max()) + 1 if labels.size else 0
        num_labels = size if num_labels is None else num_labels
        if size > num_labels:
            raise ValueError(f"label {size - 1} out of range for num_labels={num_labels}")
        return scipy.sparse.csr_matrix((np.ones(n), (labels.astype(np.int64), np.arange(n))), shape=(num_labels, n))
    if labels.ndim == 2:
        if num_labels is not None and labels.shape[1] != num_labels:
            raise ValueError(f"multi-hot labels have {labels.shape[1]} columns, num_labels={num_labels}")
        return scipy.sparse.csr_matrix((labels != 0).T.astype(np.float64))
    raise ValueError(f"labels must be 1-D ints or 2-D multi-hot, got shape {labels.shape}")


def class_means(
    features: np.ndarray, labels: np.ndarray, num_labels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label mean feature [L, D] (NaN rows for absent labels) and per-label image counts [L]."""
    features = np.asarray(features, dtype=np.float64)
    member = _membership(labels, num_labels)
    if member.shape[1] != features.shape[0]:
        raise ValueError(f"{member.shape[1]} label rows for {features.shape[0]} feature rows")
    counts = np.asarray(member.sum(axis=1)).ravel()
    sums = np.asarray(member @ features)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts[:, None]
    return means, counts


def emd(
    source_points: np.ndarray,
    source_weights: np.ndarray,
    target_points: np.ndarray,
    target_weights: np.ndarray,
) -> float:
    """Exact EMD between two weighted point sets (weights renormalised), Euclidean ground distance."""
    a = np.asarray(source_weights, dtype=np.float64)
    b = np.asarray(target_weights, dtype=np.float64)
    if a.sum() <= 0 or b.sum() <= 0:
        raise ValueError("both domains need positive total weight")
    keep_a, keep_b = a > 0, b > 0
    xs = np.asarray(source_points, dtype=np.float64)[keep_a]
    xt = np.asarray(target_points, dtype=np.float64)[keep_b]
    a, b = a[keep_a] / a[keep_a].sum(), b[keep_b] / b[keep_b].sum()
    cost = ot.dist(xs, xt, metric="euclidean")
    value, log = ot.emd2(a, b, cost, numItermax=max(100_000, 50 * cost.size), log=True)
    if log.get("warning"):
        raise RuntimeError(f"EMD solver did not converge: {log['warning']}")
    return float(value)


def similarity_from_emd(distance: float | np.ndarray, gamma: float = CUI_GAMMA) -> float | np.ndarray:
    """Cui et al. Eqn. 3: sim = exp(-gamma * EMD)."""
    return np.exp(-gamma * np.asarray(distance, dtype=np.float64))


def target_units(target_features: np.ndarray, target_labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Target mass points: class means weighted by image share, or every image with mass 1/M."""
    target_features = np.asarray(target_features, dtype=np.float64)
    if target_labels is None:
        m = target_features.shape[0]
        return target_features, np.full(m, 1.0 / m)
    means, counts = class_means(target_features, target_labels)
    keep = counts > 0
    return means[keep], counts[keep] / counts[keep].sum()


def emd_similarity(
    source_features: np.ndarray,
    source_labels: np.ndarray,
    target_features: np.ndarray,
    target_labels: np.ndarray | None = None,
    gamma: float = CUI_GAMMA,
) -> float:
    """Cui et al.'s domain similarity sim(S, T) = exp(-gamma * EMD(S, T)) over class-mean features."""
    s_means, s_counts = class_means(source_features, source_labels)
    keep = s_counts > 0
    t_points, t_weights = target_units(target_features, target_labels)
    distance = emd(s_means[keep], s_counts[keep], t_points, t_weights)
    return float(similarity_from_emd(distance, gamma))


def label_similarities(
    source_means: np.ndarray,
    target_points: np.ndarray,
    target_weights: np.ndarray,
    gamma: float = CUI_GAMMA,
) -> np.ndarray:
    """sim({(s_i, 1)}, T) for every source label i; NaN means (absent labels) score -inf.

    With all source mass on one point the optimal flow is forced (f_ij = w_tj), so the EMD is the
    target-weighted mean distance and needs no LP; computed in label chunks to bound memory.
    """
    source_means = np.asarray(source_means, dtype=np.float64)
    target_points = np.asarray(target_points, dtype=np.float64)
    w = np.asarray(target_weights, dtype=np.float64)
    w = w / w.sum()
    present = ~np.isnan(source_means).any(axis=1)
    distances = np.full(source_means.shape[0], np.inf)
    rows = np.flatnonzero(present)
    for start in range(0, rows.size, _LABEL_CHUNK):
        chunk = rows[start : start + _LABEL_CHUNK]
        distances[chunk] = ot.dist(source_means[chunk], target_points, metric="euclidean") @ w
    sims = np.exp(-gamma * distances)
    sims[~present] = -np.inf
    return sims


def emd_select_labels(
    source_features: np.ndarray,
    source_labels: np.ndarray,
    target_features: np.ndarray,
    target_labels: np.ndarray | None = None,
    *,
    num_source_labels: int,
    k: int,
    label_counts: np.ndarray | None = None,
    size: float | None = None,
    gamma: float = CUI_GAMMA,
) -> np.ndarray:
    """Cui et al. 4.2: keep the k source labels most similar to the target; per-label planned counts.

    `source_features`/`source_labels` may be a sample of the source corpus (they only give the class
    means). With `size=None` every example of a chosen label is planned once (`label_counts`, the
    corpus's per-label counts, is then required), as Cui et al. trained on the chosen categories'
    images; with `size` the draws are split uniformly, size / k per chosen label (with replacement
    where that exceeds a label's count, as for Ngiam et al.'s uniform matcher). Ties go to the lower
    label index.
    """
    means, _ = class_means(source_features, source_labels, num_source_labels)
    t_points, t_weights = target_units(target_features, target_labels)
    sims = label_similarities(means, t_points, t_weights, gamma)
    return plan_from_similarities(sims, label_counts, k=k, size=size, num_source_labels=num_source_labels)


def plan_from_similarities(
    sims: np.ndarray,
    label_counts: np.ndarray | None,
    *,
    k: int,
    size: float | None,
    num_source_labels: int | None = None,
) -> np.ndarray:
    """Planned draws per source label from the labels' similarities (highest first, ties to the lower
    index). k > 0: the top k labels, all their examples (`size` None) or size / k each; k = 0: the top
    labels in order, all their examples, until `size` examples are planned (the last label partly),
    which is the equal-budget form the pipeline compares with the other methods."""
    sims = np.asarray(sims, np.float64)
    num_source_labels = len(sims) if num_source_labels is None else num_source_labels
    available = int(np.isfinite(sims).sum())
    counts = None
    if label_counts is not None:
        counts = np.asarray(label_counts, dtype=np.float64)
        if counts.shape != (num_source_labels,):
            raise ValueError(f"label_counts has shape {counts.shape}, expected ({num_source_labels},)")
    ranked = np.argsort(-sims, kind="stable")[:available]
    planned = np.zeros(num_source_labels, dtype=np.float64)
    if k == 0:
        if counts is None or size is None or size <= 0:
            raise ValueError("k=0 needs label_counts and a positive size (fill the size from the top labels)")
        taken = np.cumsum(counts[ranked]) - counts[ranked]  # examples planned before each label
        planned[ranked] = np.clip(size - taken, 0.0, counts[ranked])
        if planned.sum() < size - 1e-9:
            raise ValueError(f"size {size:g} exceeds the {counts[ranked].sum():g} examples of the scored labels")
        return planned
    if not 0 < k <= available:
        raise ValueError(f"k={k} must be in [1, {available}] (labels seen in the source features)")
    chosen = ranked[:k]
    if size is None:
        if counts is None:
            raise ValueError("label_counts is required when size is None (all examples of chosen labels)")
        planned[chosen] = counts[chosen]
    else:
        if size <= 0:
            raise ValueError("size must be positive")
        planned[chosen] = size / k
    return planned
