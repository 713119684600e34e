"""DeLong's test for correlated ROC AUCs, in the fast O(n log n) form of Sun & Xu (2014).

DeLong, DeLong & Clarke-Pearson (1988) estimate the covariance of several AUCs measured on the
same cases from the structural components (placements) of each case; Sun & Xu compute those
placements from midranks instead of the O(m*n) pairwise kernel. Used to test whether two models
differ on exactly the same images.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata


def delong_covariance(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for k score vectors on the same cases.

    ``scores`` is (k, n) or (n,); ``y_true`` holds 0/1 (no NaN: mask before calling).
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
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


def delong_auc_variance(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """One AUC and its DeLong variance."""
    aucs, cov = delong_covariance(y_true, scores)
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(y_true: np.ndarray, scores: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """Normal-approximation CI of one AUC from its DeLong variance (clipped to [0, 1])."""
    auc, var = delong_auc_variance(y_true, scores)
    half = norm.ppf(1 - alpha / 2) * np.sqrt(max(var, 0.0))
    return {"auc": auc, "variance": var, "low": max(0.0, auc - half), "high": min(1.0, auc + half)}


def delong_test(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict[str, float]:
    """Two-sided test of AUC(a) == AUC(b) on the same cases.

    Returns both AUCs, the difference, its standard error, z and p. When the difference has
    zero variance (identical rankings) z is 0 and p is 1.
    """
    aucs, cov = delong_covariance(y_true, np.vstack([np.ravel(scores_a), np.ravel(scores_b)]))
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
