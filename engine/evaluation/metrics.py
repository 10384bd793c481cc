"""Classification metrics for the few-shot studies, computed with scikit-learn.

Contract: ``y_true`` int labels (N,) in ``[0, C)``; ``probs`` float (N, C) class probabilities
(rows need not sum to 1 exactly; argmax is the prediction). Metrics that are undefined for the
data (ROC AUC when a class is absent from ``y_true``) are ``nan``, never an exception.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix,
                             recall_score, roc_auc_score)

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _check(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (N, C) with N={y.shape[0]}, got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got [{y.min()}, {y.max()}]")
    return y, p


def accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    y, p = _check(y_true, probs)
    return float(accuracy_score(y, p.argmax(1)))


def balanced_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    y, p = _check(y_true, probs)
    return float(balanced_accuracy_score(y, p.argmax(1)))


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over classes; nan unless every class occurs in ``y_true``."""
    y, p = _check(y_true, probs)
    n_classes = p.shape[1]
    if len(np.unique(y)) < n_classes:
        return math.nan
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)  # sklearn's ovr wants rows summing to 1
    if n_classes == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p, multi_class="ovr", average="macro",
                               labels=list(range(n_classes))))


METRICS: dict[str, MetricFn] = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy,
                                "macro_auc": macro_auc}


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           class_names: Sequence[str]) -> dict:
    """All study metrics in one JSON-serialisable dict.

    Keys: ``n``, ``accuracy``, ``balanced_accuracy``, ``macro_auc`` (one-vs-rest),
    ``sensitivity`` and ``specificity`` ({class: float}, one-vs-rest; nan for a class with no
    positives / no negatives), ``confusion_matrix`` (rows = true class, cols = predicted, in
    ``class_names`` order).
    """
    y, p = _check(y_true, probs)
    if p.shape[1] != len(class_names):
        raise ValueError(f"probs has {p.shape[1]} columns but {len(class_names)} class names")
    pred = p.argmax(1)
    labels = list(range(len(class_names)))
    sens, spec = {}, {}
    for c, name in enumerate(class_names):
        pos_true, pos_pred = (y == c).astype(int), (pred == c).astype(int)
        sens[name] = (float(recall_score(pos_true, pos_pred, pos_label=1, zero_division=np.nan))
                      if pos_true.any() else math.nan)
        spec[name] = (float(recall_score(pos_true, pos_pred, pos_label=0, zero_division=np.nan))
                      if (1 - pos_true).any() else math.nan)
    return {
        "n": int(y.size),
        "accuracy": accuracy(y, p),
        "balanced_accuracy": balanced_accuracy(y, p),
        "macro_auc": macro_auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


def bootstrap_ci(y_true: np.ndarray, probs: np.ndarray, metric: str | MetricFn = "accuracy",
                 n: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` confidence interval (95% by default) of ``metric``.

    ``metric`` is a name in ``METRICS`` or a callable ``(y_true, probs) -> float``. Test samples
    are resampled with replacement ``n`` times; resamples where the metric is undefined (nan)
    are dropped. Returns (nan, nan) if none is defined.
    """
    y, p = _check(y_true, probs)
    fn = METRICS[metric] if isinstance(metric, str) else metric
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        idx = rng.integers(0, y.size, y.size)
        v = fn(y[idx], p[idx])
        if not math.isnan(v):
            vals.append(v)
    if not vals:
        return math.nan, math.nan
    lo, hi = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) across seeds."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_std of an empty list")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
