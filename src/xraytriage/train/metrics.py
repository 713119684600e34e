"""Validation metrics of a training run: per-label ROC AUC, their mean, and operating thresholds
chosen on the validation set by Youden's J (sensitivity + specificity - 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from xraytriage.auc_means import training_means
from xraytriage.stats import roc_auc
from xraytriage.stats import youden_threshold as youden


def label_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC of one label (:func:`xraytriage.stats.roc_auc` on the training masking rule:
    labels may be soft (LSR, rounded) or outside [0, 1] (-1 / 2, dropped)); NaN when the
    validation rows hold only one class."""
    return roc_auc(y_true, y_score, binarize=True)


def youden_threshold(y_true: np.ndarray, y_score: np.ndarray, *, default: float = 0.5) -> float:
    """Probability threshold maximising Youden's J on these rows (``default`` if undefined):
    :func:`xraytriage.stats.youden_threshold` on the training masking rule, clipped to [0, 1]."""
    t = youden(y_true, y_score, binarize=True, default=math.nan)
    return default if math.isnan(t) else float(np.clip(t, 0.0, 1.0))


def validation_metrics(
    y_true: np.ndarray, y_score: np.ndarray, *, label_names: Sequence[str], loss: float | None = None
) -> dict[str, float]:
    """``{"val_loss", "mean_auc_14_findings", "mean_auc_all_outputs", "auc/<label>", ...}``: the
    means named by what they average (:mod:`xraytriage.auc_means`), over labels whose AUC is
    defined."""
    per_label = {name: label_auc(y_true[:, j], y_score[:, j]) for j, name in enumerate(label_names)}
    out = {"val_loss": math.nan if loss is None else float(loss)}
    out.update(training_means(per_label))
    out.update({f"auc/{name}": v for name, v in per_label.items()})
    return out


def youden_thresholds(
    y_true: np.ndarray, y_score: np.ndarray, *, label_names: Sequence[str]
) -> dict[str, float]:
    return {name: youden_threshold(y_true[:, j], y_score[:, j]) for j, name in enumerate(label_names)}


def is_better(value: float, best: float | None, maximize: bool, min_delta: float = 0.0) -> bool:
    """NaN is never better; anything beats no best yet."""
    if value is None or math.isnan(value):
        return False
    if best is None or math.isnan(best):
        return True
    return value > best + min_delta if maximize else value < best - min_delta
