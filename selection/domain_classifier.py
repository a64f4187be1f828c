"""Chakraborty et al. (2021) domain-classifier filtering (their Algorithm 2), on fixed features.

A binary classifier learns source (0) vs target (1) from all M target examples and M source examples
drawn at random; every source example is then scored with p(target | x) and the N' highest-scoring
ones are kept, each once. For the Bayes-optimal classifier p = p_t / (p_s + p_t) (their Eqn. 5), so
the ranking is by the density ratio p_t / p_s. Chakraborty et al. train a CNN end to end as the
classifier, which is the pipeline's `domain_classifier` method (`selection.example_level`); this
module is its cheaper variant (`classifier="logistic"`): a logistic regression on penultimate-layer
features (standardised), plus the top-N rule.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

_SCORE_CHUNK = 65_536


def fit_domain_classifier(
    source_sample: np.ndarray,
    target_features: np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> Pipeline:
    """Logistic regression source (0) vs target (1), class-balanced so unequal sample sizes don't bias p."""
    x = np.concatenate([source_sample, target_features]).astype(np.float64)
    y = np.concatenate([np.zeros(len(source_sample)), np.ones(len(target_features))])
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter, random_state=seed),
    )
    return model.fit(x, y)


def domain_classifier_scores(
    source_features: np.ndarray,
    target_features: np.ndarray,
    *,
    fit_source_size: int | None = None,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """p(target | x) for every source example.

    The classifier is fitted on all target rows and `fit_source_size` random source rows (default M,
    the target size, as in Algorithm 2), then scores the whole source in chunks.
    """
    n = len(source_features)
    m = len(target_features) if fit_source_size is None else fit_source_size
    if n == 0 or len(target_features) == 0:
        raise ValueError("need source and target features")
    rows = np.random.default_rng(seed).choice(n, size=min(m, n), replace=False)
    model = fit_domain_classifier(
        np.asarray(source_features)[np.sort(rows)], target_features, C=C, max_iter=max_iter, seed=seed
    )
    scores = np.empty(n, dtype=np.float64)
    for start in range(0, n, _SCORE_CHUNK):
        chunk = np.asarray(source_features[start : start + _SCORE_CHUNK], dtype=np.float64)
        scores[start : start + _SCORE_CHUNK] = model.predict_proba(chunk)[:, 1]
    return scores


def select_top_examples(scores: np.ndarray, example_ids: list[bytes] | np.ndarray, size: int) -> dict[bytes, int]:
    """The `size` highest-scoring examples, one copy each; ties go to the earlier example."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(example_ids) != scores.shape[0]:
        raise ValueError(f"{len(example_ids)} example ids for {scores.shape[0]} scores")
    if not 0 <= size <= scores.shape[0]:
        raise ValueError(f"size={size} must be in [0, {scores.shape[0]}]")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    chosen = np.argsort(-scores, kind="stable")[:size]
    copies = {bytes(example_ids[i]): 1 for i in chosen}
    if len(copies) != size:
        raise ValueError("the selected example ids are not unique")
    return copies


def domain_classifier_select(scores: np.ndarray, example_ids: list[bytes] | np.ndarray, size: int) -> dict[bytes, int]:
    """Chakraborty et al.'s TOP(D_s, N', c_s): the N' source examples most likely to be target, no repeats."""
    return select_top_examples(scores, example_ids, size)
