"""Side by side with another model's predictions on exactly the same images.

The other model's CSV (image, probability per label; e.g. the CheXNet reproduction's
``Image Index, prob_<Label>``) is inner-joined with ours by image file name (with parent
folders where file names repeat, as in MURA), so both are scored
on the same images and labels; per label we report both AUCs, the DeLong test of the
difference and a patient-level paired bootstrap CI of it.

DeLong's test for correlated ROC AUCs lives here, with the comparisons that use it, in the fast
O(n log n) form of Sun & Xu (2014): DeLong, DeLong & Clarke-Pearson (1988) estimate the
covariance of several AUCs measured on the same cases from the structural components
(placements) of each case; Sun & Xu compute those placements from midranks instead of the
O(m*n) pairwise kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from xraytriage.errors import ConfigError
from xraytriage.evaluate.bootstrap import paired_bootstrap_difference
from xraytriage.evaluate.metrics import DEFAULT_THRESHOLDS, has_both_classes, multilabel_metrics
from xraytriage.evaluate.predictions import (
    PROB,
    evaluable_labels,
    join_on_images,
    label_matrix,
    prob_labels,
    source_paths,
)
from xraytriage.stats import known_rows


# --- DeLong -------------------------------------------------------------------------------------
def delong_covariance(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for k score vectors on the same cases.

    ``y_score`` is (k, n) or (n,); ``y_true`` holds 0/1 (no NaN: mask before calling).
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.atleast_2d(np.asarray(y_score, dtype=np.float64))
    if s.shape[1] != y.size:
        raise ValueError(f"{s.shape[1]} scores for {y.size} labels")
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both positive and negative cases")
    rank_pos = rankdata(pos, axis=1)  # midranks within positives
    rank_neg = rankdata(neg, axis=1)
    rank_all = rankdata(np.hstack([pos, neg]), axis=1)
    aucs = rank_all[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v_pos = (rank_all[:, :m] - rank_pos) / n  # placement of each positive among negatives
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m  # share of positives above each negative
    s_pos = np.atleast_2d(np.cov(v_pos)) if m > 1 else np.zeros((s.shape[0], s.shape[0]))
    s_neg = np.atleast_2d(np.cov(v_neg)) if n > 1 else np.zeros((s.shape[0], s.shape[0]))
    return aucs, s_pos / m + s_neg / n


def delong_auc_variance(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """One AUC and its DeLong variance."""
    aucs, cov = delong_covariance(y_true, y_score)
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(y_true: np.ndarray, y_score: np.ndarray, *, alpha: float = 0.05) -> dict[str, float]:
    """Normal-approximation CI of one AUC from its DeLong variance (clipped to [0, 1])."""
    auc, var = delong_auc_variance(y_true, y_score)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(max(var, 0.0))
    return {"auc": auc, "variance": var, "low": max(0.0, auc - half), "high": min(1.0, auc + half)}


def delong_test(y_true: np.ndarray, y_score: np.ndarray, *, y_score_b: np.ndarray) -> dict[str, float]:
    """Two-sided test of AUC(a) == AUC(b) on the same cases (a: ``y_score``, b: ``y_score_b``).

    Returns both AUCs, the difference, its standard error, z and p. When the difference has
    zero variance (identical rankings) z is 0 and p is 1.
    """
    aucs, cov = delong_covariance(y_true, np.vstack([np.ravel(y_score), np.ravel(y_score_b)]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    if se <= 1e-12:  # identical rankings: no evidence of a difference unless the AUCs differ
        z, p = (0.0, 1.0) if abs(diff) <= 1e-12 else (float(np.sign(diff) * np.inf), 0.0)
    else:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": diff,
        "se": se,
        "z": float(z),
        "p_value": p,
    }


# --- comparisons ----------------------------------------------------------------------------------
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
        keep = known_rows(y[:, j], p_ours[:, j], p_other[:, j])
        row: dict[str, Any] = {
            "label": label,
            "n": int(keep.sum()),
            "positives": int((y[keep, j] == 1).sum()),
        }
        if has_both_classes(y[keep, j]):
            test = delong_test(y[keep, j], p_ours[keep, j], y_score_b=p_other[keep, j])
            boot = paired_bootstrap_difference(
                y[:, j],
                p_ours[:, j],
                y_score_b=p_other[:, j],
                metric="auc",
                groups=groups,
                n_boot=n_boot,
                seed=seed + j,
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
        names[0]: multilabel_metrics(y, p_ours, label_names=labels, thresholds=thresholds),
        names[1]: multilabel_metrics(y, p_other, label_names=labels, thresholds=thresholds),
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
    from xraytriage.evaluate.result import with_abnormal_columns
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
        mask = (groups == group) & known_rows(y)
        positives = int((y[mask] == 1).sum())
        row: dict[str, Any] = {"group": group, "n": int(mask.sum()), "positives": positives}
        if has_both_classes(y[mask]):
            test = delong_test(y[mask], p_ours[mask], y_score_b=p_other[mask])
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
