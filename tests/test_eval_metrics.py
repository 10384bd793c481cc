"""engine/metrics.py against cases computed by hand (the expected numbers are written out here)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from medfake.engine.evaluation.metrics import (bootstrap_ci, classification_metrics, macro_auc,
                                               mean_std)


def _probs(pred: list[int], n_classes: int) -> np.ndarray:
    """0.8 on the predicted class, the rest shared equally (rows sum to 1)."""
    p = np.full((len(pred), n_classes), 0.2 / (n_classes - 1))
    p[np.arange(len(pred)), pred] = 0.8
    return p


def test_three_class_confusion_by_hand():
    # true 0 x3 -> predicted 0,0,1; true 1 x3 -> 1,1,2; true 2 x4 -> 2,2,2,0
    y = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
    m = classification_metrics(np.array(y), _probs(pred, 3), ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0],
                                     [0, 2, 1],
                                     [1, 0, 3]]
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(7 / 10)
    # sensitivity = TP / positives: 2/3, 2/3, 3/4
    assert m["sensitivity"] == pytest.approx({"a": 2 / 3, "b": 2 / 3, "c": 3 / 4})
    # specificity = TN / negatives: a: 7 negatives, 1 predicted a (a true c) -> 6/7;
    # b: 7 negatives, 1 predicted b (a true a) -> 6/7; c: 6 negatives, 1 predicted c -> 5/6
    assert m["specificity"] == pytest.approx({"a": 6 / 7, "b": 6 / 7, "c": 5 / 6})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)  # 25/36
    # two-level scores: one-vs-rest AUC = (sensitivity + specificity) / 2 per class
    # a, b: (2/3 + 6/7)/2 = 16/21; c: (3/4 + 5/6)/2 = 19/24; macro = 389/504
    assert m["macro_auc"] == pytest.approx(389 / 504)
    assert m["class_names"] == ["a", "b", "c"]


def test_binary_auc_and_rates_by_hand():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(y, np.c_[1 - p1, p1], ["neg", "pos"])
    # argmax -> [0, 0, 0, 1]
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["sensitivity"] == pytest.approx({"neg": 1.0, "pos": 1 / 2})
    assert m["specificity"] == pytest.approx({"neg": 1 / 2, "pos": 1.0})
    assert m["balanced_accuracy"] == pytest.approx(3 / 4)
    # positive/negative pairs ordered correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); not 0.35<0.4
    assert m["macro_auc"] == pytest.approx(3 / 4)


def test_absent_class_gives_nan_not_error():
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, _probs([0, 1, 1, 1], 3), ["a", "b", "c"])
    assert math.isnan(m["macro_auc"])
    assert math.isnan(m["sensitivity"]["c"])              # no positives of c
    assert m["specificity"]["c"] == pytest.approx(1.0)    # 4 negatives, none predicted c
    assert m["sensitivity"]["a"] == pytest.approx(1 / 2)
    assert math.isnan(macro_auc(np.array([1, 1]), _probs([1, 0], 2)))


def test_bootstrap_ci_by_hand():
    y = np.array([0, 1])
    # all correct / all wrong: every resample has accuracy 1 / 0
    assert bootstrap_ci(y, _probs([0, 1], 2), n=200) == (1.0, 1.0)
    assert bootstrap_ci(y, _probs([1, 0], 2), n=200) == (0.0, 0.0)
    # one right, one wrong: resample accuracy is 0, 1/2, 1 with p = 1/4, 1/2, 1/4, so with 1000
    # resamples both extremes occur (P(miss) = 0.75**1000) and the 95% interval is [0, 1]
    assert bootstrap_ci(y, _probs([0, 0], 2), n=1000) == (0.0, 1.0)
    # AUC of a perfect ranking: single-class resamples (undefined) are dropped, the rest are 1
    assert bootstrap_ci(y, np.array([[0.9, 0.1], [0.2, 0.8]]), "macro_auc", n=200) == (1.0, 1.0)
    # same seed -> same interval; a callable metric works
    yy = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    pp = _probs([0, 1, 0, 0, 1, 1, 0, 1], 2)
    assert bootstrap_ci(yy, pp, seed=3, n=300) == bootstrap_ci(yy, pp, seed=3, n=300)
    lo, hi = bootstrap_ci(yy, pp, lambda t, p: float((p.argmax(1) == t).mean()), n=300)
    assert 0 <= lo <= 6 / 8 <= hi <= 1


def test_bootstrap_ci_all_undefined_is_nan():
    lo, hi = bootstrap_ci(np.array([1, 1, 1]), _probs([1, 1, 0], 2), "macro_auc", n=20)
    assert math.isnan(lo) and math.isnan(hi)


def test_mean_std_by_hand():
    mean, std = mean_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8)
    assert std == pytest.approx(0.1)          # sqrt((0.01 + 0 + 0.01) / (3 - 1))
    assert mean_std([0.5]) == (0.5, 0.0)
    with pytest.raises(ValueError):
        mean_std([])
