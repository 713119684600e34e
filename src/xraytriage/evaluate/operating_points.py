"""Operating thresholds chosen on a validation set (never on the test set they are reported on).

Three rules, each a one-liner over scikit-learn's curves:
``youden`` maximises sensitivity + specificity - 1, ``sensitivity`` takes the highest threshold
that still reaches a target sensitivity (a screening tool must not miss), ``f1`` maximises F1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from xraytriage.errors import ConfigError
from xraytriage.evaluate.metrics import has_both_classes, valid_pairs

METHODS = ("youden", "sensitivity", "f1")


def youden_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Threshold maximising Youden's J = TPR - FPR (the first, i.e. highest, on ties)."""
    y, p = valid_pairs(y_true, y_prob)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def sensitivity_threshold(y_true: np.ndarray, y_prob: np.ndarray, target: float = 0.9) -> float:
    """Highest threshold whose sensitivity (``prob >= t``) is at least ``target``."""
    if not 0 < target <= 1:
        raise ConfigError(f"target sensitivity must be in (0, 1], got {target}")
    y, p = valid_pairs(y_true, y_prob)
    _, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    ok = np.flatnonzero((tpr >= target - 1e-12) & np.isfinite(thr))
    return float(thr[ok[0]]) if ok.size else float(np.min(p))


def f1_threshold(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Threshold maximising F1 on the precision-recall curve."""
    y, p = valid_pairs(y_true, y_prob)
    precision, recall, thr = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thr[int(np.argmax(f1))])


def choose_threshold(
    y_true: np.ndarray, y_prob: np.ndarray, method: str = "youden", target: float = 0.9
) -> float:
    """One label's threshold by ``method`` (youden | sensitivity | f1); 0.5 without both classes."""
    y, _ = valid_pairs(y_true, y_prob)
    if not has_both_classes(y):
        return 0.5
    if method == "youden":
        return youden_threshold(y_true, y_prob)
    if method == "sensitivity":
        return sensitivity_threshold(y_true, y_prob, target)
    if method == "f1":
        return f1_threshold(y_true, y_prob)
    raise ConfigError(f"operating point method must be one of {', '.join(METHODS)}; got {method!r}")


def parse_method(spec: str) -> tuple[str, float]:
    """``"youden"``, ``"f1"``, ``"sensitivity"`` or ``"sensitivity:0.95"`` -> (method, target)."""
    method, _, value = spec.partition(":")
    method = method.strip().lower()
    if method not in METHODS:
        raise ConfigError(
            f"operating point must be one of {', '.join(METHODS)} (sensitivity:0.9); got {spec!r}"
        )
    try:
        target = float(value) if value else 0.9
    except ValueError:
        raise ConfigError(f"bad target sensitivity in {spec!r}") from None
    return method, target


def choose_thresholds(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    label_names: Sequence[str],
    method: str = "youden",
    target: float = 0.9,
) -> dict[str, float]:
    """Per-label thresholds {label: t} chosen on validation labels/probabilities (N, L)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    return {
        name: choose_threshold(y_true[:, j], y_prob[:, j], method, target)
        for j, name in enumerate(label_names)
    }


def all_operating_points(
    y_true: np.ndarray, y_prob: np.ndarray, label_names: Sequence[str], target: float = 0.9
) -> dict[str, dict[str, float]]:
    """{method: {label: threshold}} for every method (sensitivity at ``target``)."""
    return {method: choose_thresholds(y_true, y_prob, label_names, method, target) for method in METHODS}
