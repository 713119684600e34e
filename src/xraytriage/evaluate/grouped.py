"""Metrics within groups (collection, view, sex, age band) and the shortcut audit.

A pooled AUC over images from several collections can be high because the collections differ
in prevalence *and* in how their images look (resolution, intensity, selection): a model that
recognises the collection then ranks by it. The honest number is the AUC *within* each group
that holds both classes, and their mean. The audit also says how well the group alone predicts
each target: the AUC of a score that is just the group's prevalence. When the pooled AUC exceeds
the within-group mean by more than ``gap``, the report warns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.errors import ConfigError
from xraytriage.stats import (  # noqa: F401 - shared with train (cross-validation); re-exported
    MIN_PER_CLASS,
    SHORTCUT_GAP,
    counts_in_mean,
    group_only_auc,
    grouped_auc,
)

GROUPINGS = ("collection", "view", "sex", "age-band")
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 200, "60+"))
UNKNOWN_GROUP = "unknown"


def age_band(age: Any) -> str:
    """``"40-59"`` etc. for an age in years; ``"unknown"`` for a missing or impossible one."""
    try:
        value = float(age)
    except (TypeError, ValueError):
        return UNKNOWN_GROUP
    for low, high, name in AGE_BANDS:
        if low <= value < high:
            return name
    return UNKNOWN_GROUP


def group_labels(frame: pd.DataFrame, by: str) -> np.ndarray:
    """The group of every row for grouping ``by`` (one of :data:`GROUPINGS`)."""
    if by not in GROUPINGS:
        raise ConfigError(f"--group-by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    column = "age" if by == "age-band" else by
    if column not in frame.columns:
        raise ConfigError(
            f"--group-by {by}: the predictions have no {column!r} column (give --dataset so it is "
            "attached, or evaluate a dataset that records it)"
        )
    if by == "age-band":
        return np.array([age_band(a) for a in frame[column]], dtype=object)
    values = frame[column].astype(object).where(frame[column].notna(), UNKNOWN_GROUP)
    return np.array([str(v).strip() or UNKNOWN_GROUP for v in values], dtype=object)


def grouped_metrics(
    y_true: np.ndarray, y_score: np.ndarray, *, labels: Sequence[str], groups: np.ndarray, by: str
) -> dict[str, Any]:
    """:func:`grouped_auc` for every label (columns of ``y_true``/``y_score``), with a warning line per
    label whose pooled AUC exceeds its within-group mean by more than :data:`SHORTCUT_GAP`."""
    per_label = {
        name: grouped_auc(y_true[:, j], y_score[:, j], groups=groups) for j, name in enumerate(labels)
    }
    warnings = [
        f"{name}: pooled AUC {r['pooled_auc']:.3f} exceeds the mean within-{by} AUC "
        f"{r['within_mean_auc']:.3f} by {r['pooled_minus_within']:.3f} (the {by} alone predicts it "
        f"with AUC {r['group_only_auc']:.3f}): the pooled number is confounded by {by}"
        for name, r in per_label.items()
        if r["shortcut_warning"]
    ]
    single_class = sorted({g for r in per_label.values() for g, v in r["groups"].items() if v["auc"] is None})
    return {"by": by, "labels": per_label, "warnings": warnings, "single_class_groups": single_class}


def grouped_table(result: dict[str, Any]) -> pd.DataFrame:
    """Flat rows ``label, group, n, positives, auc`` plus one ``(within-group mean)`` and one
    ``(pooled)`` row per label: grouped_metrics.csv."""
    rows = []
    for label, r in result["labels"].items():
        for group, v in r["groups"].items():
            rows.append({"label": label, "group": group, **v})
        rows.append({"label": label, "group": "(within-group mean)", "auc": r["within_mean_auc"]})
        rows.append({"label": label, "group": "(pooled)", "auc": r["pooled_auc"]})
        rows.append({"label": label, "group": f"({result['by']} alone)", "auc": r["group_only_auc"]})
    return pd.DataFrame(rows, columns=["label", "group", "n", "positives", "auc", "in_mean"])
