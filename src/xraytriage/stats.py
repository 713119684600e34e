"""The statistics both training and evaluation need: masked ROC AUC, Youden's threshold and the
AUC within groups. It sits below ``train`` and ``evaluate`` so neither imports the other;
``xraytriage.evaluate.metrics``, ``.operating_points`` and ``.grouped`` re-export these names.

Labels are float with NaN = unknown; every function masks the pairs where label or probability
is unknown. The numbers come from scikit-learn.
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


def valid_pairs(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (label, probability) pairs of one label where both are known."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.shape[0]}) and probabilities ({p.shape[0]}) differ in length")
    keep = ~np.isnan(y) & ~np.isnan(p)
    return y[keep], p[keep]


def has_both_classes(y: np.ndarray) -> bool:
    return bool(np.any(y == 1) and np.any(y == 0))


def roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """ROC AUC of the known pairs; NaN when only one class is present."""
    y, p = valid_pairs(y_true, y_prob)
    return float(roc_auc_score(y, p)) if has_both_classes(y) else float("nan")


def youden_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Threshold maximising Youden's J = TPR - FPR (the first, i.e. highest, on ties)."""
    y, p = valid_pairs(y_true, y_prob)
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


def group_only_auc(y_true: np.ndarray, groups: np.ndarray) -> float | None:
    """AUC of predicting ``y_true`` by nothing but the group (each image scored with its group's
    prevalence): what a model that only recognised the group could reach. 0.5 = uninformative."""
    y = np.asarray(y_true, dtype=np.float64)
    known = ~np.isnan(y)
    y, g = y[known], np.asarray(groups)[known]
    if len(y) == 0:
        return None
    prevalence = pd.Series(y).groupby(pd.Series(g)).transform("mean").to_numpy()
    return _auc(y, prevalence)


def grouped_auc(
    y_true: np.ndarray, y_prob: np.ndarray, groups: np.ndarray, min_per_class: int = MIN_PER_CLASS
) -> dict[str, Any]:
    """Per group: images, positives, AUC (None when the group holds one class), and whether it
    counts in the mean; the unweighted mean of the within-group AUCs over groups with at least
    ``min_per_class`` of each class; the pooled AUC; the group-only AUC and the gap."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    g = np.asarray(groups, dtype=object)
    known = ~np.isnan(y) & ~np.isnan(p)
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
        "group_only_auc": group_only_auc(y, g),
        "pooled_minus_within": gap,
        "shortcut_warning": bool(gap is not None and gap > SHORTCUT_GAP),
    }
