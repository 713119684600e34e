"""The statistics both training and evaluation need: masked ROC AUC, Youden's threshold and the
AUC within groups. It sits below ``train`` and ``evaluate`` so neither imports the other;
``xraytriage.evaluate.metrics``, ``.operating_points`` and ``.grouped`` re-export these names.

Every metric function takes ``(y_true, y_score, *, ...)`` (truth first, the score second, the
rest keyword-only, as scikit-learn). Labels are float with NaN = unknown; every function masks
the pairs where label or score is unknown by one rule, :func:`known_rows`. The numbers come
from scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

MIN_PER_CLASS = 5
"""A group counts in the within-group mean only with at least this many of each class (its AUC
is still reported); a handful of images gives an AUC that is mostly noise."""
SHORTCUT_GAP = 0.05
"""Pooled minus within-group mean AUC above this is reported as a likely shortcut."""


def known_rows(y_true: np.ndarray, *y_score: np.ndarray, binarize: bool = False) -> np.ndarray:
    """The one masking rule: True for the rows whose label and every score are known.

    Unknown is a NaN label or a NaN score. With ``binarize`` (training targets) a label outside
    [0, 1] is unknown too: -1 (uncertain, U-Ignore) and 2 (U-MultiClass); NaN falls outside as
    well. Takes several score arrays for paired comparisons (two models on the same images)."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    keep = (y >= 0) & (y <= 1) if binarize else ~np.isnan(y)
    for score in y_score:
        s = np.asarray(score, dtype=np.float64).ravel()
        if s.shape != y.shape:
            raise ValueError(f"labels ({y.shape[0]}) and probabilities ({s.shape[0]}) differ in length")
        keep &= ~np.isnan(s)
    return keep


def valid_pairs(
    y_true: np.ndarray, y_score: np.ndarray, *, binarize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The (label, score) pairs of one label where both are known (:func:`known_rows`). With
    ``binarize`` soft labels (label smoothing) are rounded to 0/1 at 0.5."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_score, dtype=np.float64).ravel()
    keep = known_rows(y, p, binarize=binarize)
    y = (y[keep] >= 0.5).astype(np.float64) if binarize else y[keep]
    return y, p[keep]


def has_both_classes(y_true: np.ndarray) -> bool:
    return bool(np.any(y_true == 1) and np.any(y_true == 0))


def roc_auc(y_true: np.ndarray, y_score: np.ndarray, *, binarize: bool = False) -> float:
    """ROC AUC of the known pairs (:func:`valid_pairs`); NaN when only one class is present.
    The one label AUC: evaluation, training (``binarize``) and the triage AUC call it."""
    y, p = valid_pairs(y_true, y_score, binarize=binarize)
    return float(roc_auc_score(y, p)) if has_both_classes(y) else float("nan")


def youden_threshold(
    y_true: np.ndarray, y_score: np.ndarray, *, binarize: bool = False, default: float = 0.5
) -> float:
    """Threshold (``score >= t`` is positive) maximising Youden's J = TPR - FPR over the known
    pairs; ``default`` without both classes. Ties: the first in ``roc_curve``'s descending
    order, i.e. the highest threshold (the fewest false alarms) among those with the best J."""
    y, p = valid_pairs(y_true, y_score, binarize=binarize)
    if not has_both_classes(y):
        return default
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


# --- AUC within groups -------------------------------------------------------------------------
def counts_in_mean(n: int, positives: int, min_per_class: int = MIN_PER_CLASS) -> bool:
    """Whether a group with ``positives`` of ``n`` holds enough of each class to be averaged."""
    return min(positives, n - positives) >= min_per_class


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    value = roc_auc(y, p)
    return None if np.isnan(value) else value


def group_only_auc(y_true: np.ndarray, *, groups: np.ndarray) -> float | None:
    """AUC of predicting ``y_true`` by nothing but the group (each image scored with its group's
    prevalence): what a model that only recognised the group could reach. 0.5 = uninformative."""
    y = np.asarray(y_true, dtype=np.float64)
    known = known_rows(y)
    y, g = y[known], np.asarray(groups)[known]
    if len(y) == 0:
        return None
    prevalence = pd.Series(y).groupby(pd.Series(g)).transform("mean").to_numpy()
    return _auc(y, prevalence)


def grouped_auc(
    y_true: np.ndarray, y_score: np.ndarray, *, groups: np.ndarray, min_per_class: int = MIN_PER_CLASS
) -> dict[str, Any]:
    """Per group: images, positives, AUC (None when the group holds one class), and whether it
    counts in the mean; the unweighted mean of the within-group AUCs over groups with at least
    ``min_per_class`` of each class; the pooled AUC; the group-only AUC and the gap."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_score, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    known = known_rows(y, p)
    y, p, g = y[known], p[known], g[known]
    per_group: dict[str, dict[str, Any]] = {}
    for name in sorted(set(g.tolist()), key=str):
        mask = g == name
        positives = int((y[mask] == 1).sum())
        n = int(mask.sum())
        auc = _auc(y[mask], p[mask]) if 0 < positives < n else None
        counted = auc is not None and counts_in_mean(n, positives, min_per_class)
        per_group[str(name)] = {"n": n, "positives": positives, "auc": auc, "in_mean": counted}
    within = [v["auc"] for v in per_group.values() if v["in_mean"]]
    pooled = _auc(y, p) if len(set(y.tolist())) == 2 else None
    within_mean = float(np.mean(within)) if within else None
    gap = pooled - within_mean if pooled is not None and within_mean is not None else None
    return {
        "groups": per_group,
        "within_mean_auc": within_mean,
        "groups_with_both_classes": len(within),
        "pooled_auc": pooled,
        "group_only_auc": group_only_auc(y, groups=g),
        "pooled_minus_within": gap,
        "shortcut_warning": bool(gap is not None and gap > SHORTCUT_GAP),
    }
