"""Cross-dataset evaluation: a model trained on one dataset scored on another through the label
mapping, on the labels both annotate only (as the seed thesis did CheXpert -> ChestX-ray14).

A label the model predicts but the target dataset does not annotate (or the reverse) has no
ground truth on one side, so reporting it would be meaningless; it is listed, not scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xraytriage.evaluate.metrics import DEFAULT_THRESHOLDS, multilabel_metrics
from xraytriage.labels import canonical_label, map_labels, shared_labels


def label_overlap(model_labels: Sequence[str], dataset_labels: Sequence[str]) -> dict[str, list[str]]:
    """Shared labels (model order, harmonised names) and those only one side has."""
    shared = shared_labels(model_labels, dataset_labels)
    shared_set = set(shared)
    return {
        "shared": shared,
        "model_only": [canonical_label(n) for n in model_labels if canonical_label(n) not in shared_set],
        "dataset_only": [canonical_label(n) for n in dataset_labels if canonical_label(n) not in shared_set],
    }


def cross_dataset_metrics(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    dataset_labels: Sequence[str],
    model_labels: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """Metrics of model probabilities ``y_score`` (N, model labels) against a dataset's label
    matrix ``y_true`` (N, dataset labels) on the shared labels."""
    overlap = label_overlap(model_labels, dataset_labels)
    shared = overlap["shared"]
    y = map_labels(y_true, dataset_labels, shared)
    p = map_labels(y_score, model_labels, shared)
    result = (
        multilabel_metrics(y, p, label_names=shared, thresholds=thresholds)
        if shared
        else {"labels": {}, "macro": {}, "micro": {}}
    )
    return {**overlap, **result}
