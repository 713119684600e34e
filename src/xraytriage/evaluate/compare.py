"""Side by side with another model's predictions on exactly the same images.

The other model's CSV (image, probability per label; e.g. the CheXNet reproduction's
``Image Index, prob_<Label>``) is inner-joined with ours by image file name (with parent
folders where file names repeat, as in MURA), so both are scored
on the same images and labels; per label we report both AUCs, the DeLong test of the
difference and a patient-level paired bootstrap CI of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.errors import ConfigError
from xraytriage.evaluate.bootstrap import paired_bootstrap_difference
from xraytriage.evaluate.delong import delong_test
from xraytriage.evaluate.metrics import DEFAULT_THRESHOLDS, has_both_classes, multilabel_metrics
from xraytriage.evaluate.predictions import (
    PROB,
    evaluable_labels,
    join_on_images,
    label_matrix,
    prob_labels,
    source_paths,
)


def join_predictions(ours: pd.DataFrame, theirs: pd.DataFrame, suffix: str = "other") -> pd.DataFrame:
    """Inner join on image identity (file name, or with parent folders where names repeat);
    their ``prob_<L>`` become ``<suffix>_prob_<L>``."""
    names = prob_labels(theirs)
    other = theirs[[PROB + n for n in names]].rename(columns={PROB + n: f"{suffix}_{PROB}{n}" for n in names})
    return join_on_images(ours, other, right_paths=source_paths(theirs))


def compare_predictions(
    ours: pd.DataFrame,
    theirs: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    names: tuple[str, str] = ("ours", "other"),
) -> dict[str, Any]:
    """Metrics of both models on the joined images, labels both predict and ``ours`` has ground
    truth for. ``ours`` needs ``label_<L>`` columns (see ``predictions.attach_labels``)."""
    joined = join_predictions(ours, theirs, "other")
    labels = [n for n in evaluable_labels(ours) if f"other_{PROB}{n}" in joined.columns]
    if not labels:
        raise ConfigError("the two prediction sets share no label with ground truth")
    if joined.empty:
        raise ConfigError("the two prediction sets share no image")
    y = label_matrix(joined, labels)
    p_ours = joined[[PROB + n for n in labels]].to_numpy(dtype=np.float64)
    p_other = joined[[f"other_{PROB}{n}" for n in labels]].to_numpy(dtype=np.float64)
    groups = joined["patient_id"].astype(str).to_numpy() if "patient_id" in joined.columns else None
    rows = []
    for j, label in enumerate(labels):
        keep = ~np.isnan(y[:, j]) & ~np.isnan(p_ours[:, j]) & ~np.isnan(p_other[:, j])
        row: dict[str, Any] = {
            "label": label,
            "n": int(keep.sum()),
            "positives": int((y[keep, j] == 1).sum()),
        }
        if has_both_classes(y[keep, j]):
            test = delong_test(y[keep, j], p_ours[keep, j], p_other[keep, j])
            boot = paired_bootstrap_difference(
                y[:, j], p_ours[:, j], p_other[:, j], "auc", groups, n_boot=n_boot, seed=seed + j
            )
            row.update(
                {
                    f"auc_{names[0]}": test["auc_a"],
                    f"auc_{names[1]}": test["auc_b"],
                    "difference": test["difference"],
                    "delong_z": test["z"],
                    "delong_p": test["p_value"],
                    "bootstrap_low": boot["low"],
                    "bootstrap_high": boot["high"],
                    "bootstrap_p": boot["p_value"],
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    return {
        "images": len(joined),
        "labels": labels,
        "names": list(names),
        "table": table,
        names[0]: multilabel_metrics(y, p_ours, labels, thresholds),
        names[1]: multilabel_metrics(y, p_other, labels, thresholds),
        "joined": joined,
    }


def compare_triage_by_group(
    comparison: dict[str, Any], by: str, names: tuple[str, str] = ("ours", "other")
) -> dict[str, Any]:
    """The triage score of both models within each group (e.g. collection) of the joined images:
    ours is our abnormal probability, theirs the noisy-OR of their findings (the rule a model
    without an abnormal output gets); per group both AUCs and the DeLong test, then the mean of
    the within-group AUCs over groups with both classes (at least 5 of each)."""
    from xraytriage.evaluate.grouped import counts_in_mean, group_labels
    from xraytriage.evaluate.runner import with_abnormal_columns
    from xraytriage.labels import NOT_DISEASE
    from xraytriage.models.checkpoint import NOISY_OR, abnormal_probability

    joined = with_abnormal_columns(comparison["joined"])
    theirs = [
        c
        for c in joined.columns
        if c.startswith(f"other_{PROB}") and c.removeprefix(f"other_{PROB}") not in NOT_DISEASE
    ]
    if "abnormal" not in joined.columns or "abnormal_probability" not in joined.columns or not theirs:
        raise ConfigError(
            "grouped comparison needs abnormal truth, our abnormal probability and their findings"
        )
    y = joined["abnormal"].to_numpy(dtype=np.float64)
    p_ours = joined["abnormal_probability"].to_numpy(dtype=np.float64)
    p_other = abnormal_probability(
        joined[theirs].to_numpy(dtype=np.float64), [c.removeprefix(f"other_{PROB}") for c in theirs], NOISY_OR
    )
    groups = group_labels(joined, by)
    rows = []
    for group in sorted(set(groups.tolist()), key=str):
        mask = (groups == group) & ~np.isnan(y)
        positives = int((y[mask] == 1).sum())
        row: dict[str, Any] = {"group": group, "n": int(mask.sum()), "positives": positives}
        if has_both_classes(y[mask]):
            test = delong_test(y[mask], p_ours[mask], p_other[mask])
            row.update(
                {
                    f"auc_{names[0]}": test["auc_a"],
                    f"auc_{names[1]}": test["auc_b"],
                    "difference": test["difference"],
                    "delong_p": test["p_value"],
                    "in_mean": counts_in_mean(int(mask.sum()), positives),
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    counted = table[table.get("in_mean", pd.Series(False, index=table.index)).fillna(False).astype(bool)]
    return {
        "by": by,
        "names": list(names),
        "table": table,
        "mean_within": {n: float(counted[f"auc_{n}"].mean()) if len(counted) else None for n in names},
        "their_score": "noisy-OR of their findings",
    }
