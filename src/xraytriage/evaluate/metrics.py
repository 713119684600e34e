"""Per-label classification metrics on (N, L) label and probability matrices.

Every function takes ``(y_true, y_score, *, ...)``: truth first, the score second, the rest
keyword-only (scikit-learn's order). Labels are float with NaN = unknown: every metric masks
NaN rows *per label* (``stats.valid_pairs``), so a label that
one dataset leaves blank does not remove the image from the other labels. The numbers come from
scikit-learn; this module only masks, loops over labels and names the results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from xraytriage.stats import has_both_classes, roc_auc, valid_pairs  # shared with train; re-exported

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8)
"""Fixed thresholds reported for every label (as in the seed thesis)."""


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision (area under the PR curve); NaN without positives."""
    y, p = valid_pairs(y_true, y_score)
    return float(average_precision_score(y, p)) if has_both_classes(y) else float("nan")


def rank_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum: equal to ``roc_auc_score`` (ties count 1/2) but
    without its input validation, for the thousands of calls a bootstrap makes. Expects
    already-masked 0/1 labels."""
    pos = y_true == 1
    n_pos = int(pos.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(y_score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def step_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision as ``average_precision_score`` defines it (sum over distinct thresholds
    of recall increase x precision), without its input validation, for bootstrap loops.
    Expects already-masked 0/1 labels."""
    y, p = y_true, y_score
    n_pos = float((y == 1).sum())
    if n_pos == 0 or n_pos == y.size:
        return float("nan")
    order = np.argsort(-p, kind="mergesort")
    ys, ps = (y[order] == 1), p[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ps)), ys.size - 1]
    tps = np.cumsum(ys)[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion_counts(
    y_true: np.ndarray, y_score: np.ndarray, *, threshold: float
) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) at ``y_score >= threshold`` for masked 0/1 labels: the same four numbers as
    ``sklearn.metrics.confusion_matrix(..., labels=[0, 1]).ravel()`` (tests check), counted
    directly because reports need them for every label x threshold x rule and sklearn's input
    validation costs ~10 ms a call."""
    pred = y_score >= threshold
    pos = y_true == 1
    tp = int(np.count_nonzero(pred & pos))
    fp = int(np.count_nonzero(pred & ~pos))
    fn = int(np.count_nonzero(~pred & pos))
    return y_true.size - tp - fp - fn, fp, fn, tp


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def threshold_metrics(y_true: np.ndarray, y_score: np.ndarray, *, threshold: float) -> dict[str, float]:
    """Confusion counts and precision / recall (sensitivity) / F1 / specificity / accuracy at
    ``prob >= threshold``. Undefined ratios (no predicted positives...) are 0, as sklearn's
    ``zero_division=0``; tests check every value against sklearn."""
    y, p = valid_pairs(y_true, y_score)
    tn, fp, fn, tp = confusion_counts(y, p, threshold=threshold)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, y.size) if y.size else float("nan"),
    }


def confusion(y_true: np.ndarray, y_score: np.ndarray, *, threshold: float) -> list[list[int]]:
    """2x2 confusion matrix [[tn, fp], [fn, tp]] at ``prob >= threshold`` (sklearn layout)."""
    y, p = valid_pairs(y_true, y_score)
    tn, fp, fn, tp = confusion_counts(y, p, threshold=threshold)
    return [[tn, fp], [fn, tp]]


def label_summary(
    y_true: np.ndarray, y_score: np.ndarray, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """All single-label numbers: counts, prevalence, AUC, AP and the fixed-threshold metrics."""
    y, _ = valid_pairs(y_true, y_score)
    n_pos = int((y == 1).sum())
    return {
        "n": int(y.size),
        "positives": n_pos,
        "prevalence": float(n_pos / y.size) if y.size else float("nan"),
        "auc": roc_auc(y_true, y_score),
        "average_precision": average_precision(y_true, y_score),
        "at_threshold": {f"{t:g}": threshold_metrics(y_true, y_score, threshold=t) for t in thresholds},
    }


def micro_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Micro-averaged AUC: every known (image, label) pair pooled, as sklearn ``average="micro"``
    does for a complete matrix."""
    y, p = valid_pairs(np.asarray(y_true).ravel(), np.asarray(y_score).ravel())
    return float(roc_auc_score(y, p)) if has_both_classes(y) else float("nan")


def micro_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    y, p = valid_pairs(np.asarray(y_true).ravel(), np.asarray(y_score).ravel())
    return float(average_precision_score(y, p)) if has_both_classes(y) else float("nan")


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else float("nan")


def multilabel_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    label_names: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """Per-label summaries plus macro (mean over labels with a defined value) and micro means."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2 or y_true.shape[1] != len(label_names):
        raise ValueError(
            f"labels {y_true.shape} and probabilities {y_score.shape} must both be N x {len(label_names)}"
        )
    per_label = {
        name: label_summary(y_true[:, j], y_score[:, j], thresholds=thresholds)
        for j, name in enumerate(label_names)
    }
    macro = {
        "auc": _nanmean([m["auc"] for m in per_label.values()]),
        "average_precision": _nanmean([m["average_precision"] for m in per_label.values()]),
    }
    for t in thresholds:
        key = f"{t:g}"
        for metric in ("precision", "recall", "f1", "specificity"):
            macro[f"{metric}@{key}"] = _nanmean([m["at_threshold"][key][metric] for m in per_label.values()])
    micro = {"auc": micro_auc(y_true, y_score), "average_precision": micro_average_precision(y_true, y_score)}
    for t in thresholds:
        key = f"{t:g}"
        counts = {
            c: sum(m["at_threshold"][key][c] for m in per_label.values()) for c in ("tp", "fp", "tn", "fn")
        }
        tp, fp, tn, fn = counts["tp"], counts["fp"], counts["tn"], counts["fn"]
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        micro[f"precision@{key}"] = prec
        micro[f"recall@{key}"] = rec
        micro[f"f1@{key}"] = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        micro[f"specificity@{key}"] = tn / (tn + fp) if tn + fp else 0.0
    return {"labels": per_label, "macro": macro, "micro": micro}
