"""Logistic regression on frozen penultimate features (Kornblith et al.'s fixed-feature baseline).

L2-regularised multinomial logistic regression with L-BFGS (scikit-learn's lbfgs), over a
log-spaced path of regularisation strengths from strongest to weakest, each fit warm-started from
the previous one; the strength is chosen by validation top-1, then the model is refit on
train + validation. Features are standardised with the training split's mean and deviation.
The objective is mean cross-entropy + l2/2 * ||W||^2, i.e. scikit-learn's C = 1 / (l2 * n).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

DEFAULT_L2_PATH = np.logspace(-6, 5, 45)


@dataclasses.dataclass
class ProbeResult:
    """The chosen strength, validation accuracy along the path, and the final classifier."""

    l2: float
    val_top1: float
    val_mean_per_class: float
    path: list[dict[str, float]]
    classifier: LogisticRegression
    mean: np.ndarray
    scale: np.ndarray


def accuracies(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top-1 and the mean over present classes of per-class accuracy."""
    correct = predicted == labels
    classes = np.unique(labels)
    return {
        "top1": float(np.mean(correct)) if len(labels) else 0.0,
        "mean_per_class": float(np.mean([correct[labels == c].mean() for c in classes])) if len(classes) else 0.0,
    }


def _fit(model: LogisticRegression, l2: float, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    model.set_params(C=1.0 / (l2 * len(y)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


def fit_logistic_regression(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    l2_path: np.ndarray = DEFAULT_L2_PATH,
    *,
    max_iter: int = 1000,
    refit: bool = True,
) -> ProbeResult:
    """Chooses the L2 strength on (val_x, val_y) and returns the probe (refit on train + val)."""
    mean = train_x.mean(axis=0)
    scale = train_x.std(axis=0) + 1e-6
    tx, vx = (train_x - mean) / scale, (val_x - mean) / scale
    model = LogisticRegression(solver="lbfgs", warm_start=True, max_iter=max_iter)
    path = []
    for l2 in sorted(np.asarray(l2_path, dtype=np.float64), reverse=True):  # strong -> weak: warm starts
        _fit(model, float(l2), tx, train_y)
        scores = accuracies(model.predict(vx), val_y)
        path.append({"l2": float(l2), "val_top1": scores["top1"], "val_mean_per_class": scores["mean_per_class"]})
    best = max(path, key=lambda p: p["val_top1"])  # the first (strongest) of equals
    chosen = LogisticRegression(solver="lbfgs", warm_start=False, max_iter=max_iter)
    if refit:
        _fit(chosen, best["l2"], np.concatenate([tx, vx]), np.concatenate([train_y, val_y]))
    else:
        _fit(chosen, best["l2"], tx, train_y)
    return ProbeResult(best["l2"], best["val_top1"], best["val_mean_per_class"], path, chosen, mean, scale)


def evaluate_probe(result: ProbeResult, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """top1 and mean_per_class of the probe on (x, y)."""
    return accuracies(result.classifier.predict((x - result.mean) / result.scale), y)
