"""Study-level evaluation (MURA style): a radiologist reads a *study* (all views of one exam),
so image probabilities are aggregated per study before scoring.

Aggregations: ``mean`` (MURA's baseline), ``max`` (one suspicious view is enough) and
``noisy_or`` (1 - prod(1 - p): views as independent detectors). The study label is the max of
its image labels (in MURA every image carries its study's label).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from xraytriage.errors import ConfigError
from xraytriage.evaluate.metrics import roc_auc, threshold_metrics, valid_pairs

AGGREGATIONS = ("mean", "max", "noisy_or")


def aggregate_probabilities(values: np.ndarray, method: str) -> float:
    """One study probability from its image probabilities."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return float("nan")
    if method == "mean":
        return float(v.mean())
    if method == "max":
        return float(v.max())
    if method == "noisy_or":
        return float(1.0 - np.prod(1.0 - v))
    raise ConfigError(f"study aggregation must be one of {', '.join(AGGREGATIONS)}; got {method!r}")


def aggregate_studies(
    images: pd.DataFrame,
    prob_columns: Sequence[str],
    label_columns: Sequence[str] | None = None,
    method: str = "mean",
    study_column: str = "study_id",
) -> pd.DataFrame:
    """One row per study: ``study_id``, ``images`` (count), each probability column aggregated by
    ``method`` and each label column reduced by max (NaN only if all images are NaN)."""
    if method not in AGGREGATIONS:
        raise ConfigError(f"study aggregation must be one of {', '.join(AGGREGATIONS)}; got {method!r}")
    missing = [c for c in [study_column, *prob_columns, *(label_columns or [])] if c not in images.columns]
    if missing:
        raise ConfigError(f"image table lacks column(s) {', '.join(missing)}")
    grouped = images.groupby(study_column, sort=False)
    reducer = (
        method if method != "noisy_or" else (lambda s: aggregate_probabilities(s.to_numpy(), "noisy_or"))
    )
    out = grouped[list(prob_columns)].agg(reducer)
    if label_columns:
        out = out.join(grouped[list(label_columns)].max())
    out.insert(0, "images", grouped.size())
    extra = [c for c in ("patient_id",) if c in images.columns and c != study_column]
    if extra:
        out = grouped[extra].first().join(out)
    return out.reset_index()


def study_metrics(y_true: np.ndarray, y_score: np.ndarray, *, threshold: float = 0.5) -> dict[str, Any]:
    """AUC, and at ``threshold`` sensitivity, specificity and Cohen's kappa (sklearn) between the
    thresholded prediction and the study label, on studies with a known label (``y_true``:
    study labels, ``y_score``: study probabilities)."""
    y, p = valid_pairs(y_true, y_score)
    at = threshold_metrics(y, p, threshold=threshold)
    pred = (p >= threshold).astype(int)
    kappa = float(cohen_kappa_score(y.astype(int), pred)) if y.size else float("nan")
    return {
        "studies": int(y.size),
        "positives": int((y == 1).sum()),
        "auc": roc_auc(y, p),
        "threshold": float(threshold),
        "sensitivity": at["sensitivity"],
        "specificity": at["specificity"],
        "kappa": kappa,
        "accuracy": at["accuracy"],
    }


def evaluate_studies(
    images: pd.DataFrame,
    prob_column: str,
    label_column: str,
    threshold: float = 0.5,
    methods: Sequence[str] = AGGREGATIONS,
    study_column: str = "study_id",
) -> dict[str, dict[str, Any]]:
    """{aggregation: study_metrics} for one label, every aggregation method."""
    out = {}
    for method in methods:
        studies = aggregate_studies(images, [prob_column], [label_column], method, study_column)
        out[method] = study_metrics(
            studies[label_column].to_numpy(), studies[prob_column].to_numpy(), threshold=threshold
        )
    return out
