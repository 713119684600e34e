"""Validation metrics of a training run: per-label ROC AUC, their mean, and operating thresholds
chosen on the validation set by Youden's J (sensitivity + specificity - 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from xraytriage.auc_means import training_means
from xraytriage.stats import youden_threshold as youden


def _binary(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label is usable (in [0, 1]; soft labels are rounded) as (y, p)."""
    labels = np.asarray(labels, dtype=np.float64)
    usable = (labels >= 0) & (labels <= 1)
    return (labels[usable] >= 0.5).astype(np.int64), np.asarray(probs, dtype=np.float64)[usable]


def label_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of one label; NaN when the validation rows hold only one class."""
    y, p = _binary(labels, probs)
    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, p))


def youden_threshold(labels: np.ndarray, probs: np.ndarray, default: float = 0.5) -> float:
    """Probability threshold maximising Youden's J on these rows (``default`` if undefined)."""
    y, p = _binary(labels, probs)  # training labels may be soft (LSR) or 2 (U-MultiClass)
    if len(np.unique(y)) < 2:
        return default
    return float(np.clip(youden(y, p), 0.0, 1.0))


def validation_metrics(
    labels: np.ndarray, probs: np.ndarray, label_names: Sequence[str], loss: float | None = None
) -> dict[str, float]:
    """``{"val_loss", "mean_auc_14_findings", "mean_auc_all_outputs", "auc/<label>", ...}``: the
    means named by what they average (:mod:`xraytriage.auc_means`), over labels whose AUC is
    defined."""
    per_label = {name: label_auc(labels[:, j], probs[:, j]) for j, name in enumerate(label_names)}
    out = {"val_loss": math.nan if loss is None else float(loss)}
    out.update(training_means(per_label))
    out.update({f"auc/{name}": v for name, v in per_label.items()})
    return out


def youden_thresholds(labels: np.ndarray, probs: np.ndarray, label_names: Sequence[str]) -> dict[str, float]:
    return {name: youden_threshold(labels[:, j], probs[:, j]) for j, name in enumerate(label_names)}


def is_better(value: float, best: float | None, maximize: bool, min_delta: float = 0.0) -> bool:
    """NaN is never better; anything beats no best yet."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best + min_delta if maximize else value < best - min_delta
