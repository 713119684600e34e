"""Bootstrap confidence intervals with patient-level (cluster) resampling.

Images of one patient are correlated, so resampling images would make intervals too narrow.
Each replicate draws *patients* with replacement and takes all their images; every label and
every compared model sees the same replicate (paired). Seeded, so reports are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.evaluate.metrics import rank_auc, step_average_precision

MetricFn = Callable[[np.ndarray, np.ndarray], float]

METRICS: dict[str, MetricFn] = {"auc": rank_auc, "average_precision": step_average_precision}
"""Replicate metrics: the same numbers as sklearn's (tests check), minus per-call validation."""


class ClusterSampler:
    """Draws bootstrap index sets that keep each group (patient) whole.

    ``groups=None`` makes every row its own group (plain image-level bootstrap).
    """

    def __init__(self, groups: Sequence[Any] | np.ndarray | None, n: int | None = None) -> None:
        if groups is None:
            if n is None:
                raise ValueError("give groups or n")
            codes = np.arange(n)
        else:
            codes, _ = pd.factorize(pd.Series(np.asarray(groups)).astype(str))
        self.n_rows = len(codes)
        self.order = np.argsort(codes, kind="stable")
        self.counts = np.bincount(codes)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.n_groups = len(self.counts)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Row indices of one replicate: ``n_groups`` groups drawn with replacement."""
        chosen = rng.integers(0, self.n_groups, size=self.n_groups)
        lengths = self.counts[chosen]
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        within = np.arange(lengths.sum()) - offsets
        return self.order[np.repeat(self.starts[chosen], lengths) + within]


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the finite replicates (NaN when none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap_metric(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    metric: str | MetricFn = "auc",
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Point estimate and percentile CI of one metric on one label (NaN labels dropped first)."""
    fn = METRICS[metric] if isinstance(metric, str) else metric
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_prob, dtype=np.float64)
    keep = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[keep], p[keep]
    g = None if groups is None else np.asarray(groups)[keep]
    sampler = ClusterSampler(g, n=len(y))
    rng = np.random.default_rng(seed)
    reps = np.array([fn(y[idx], p[idx]) for idx in (sampler.sample(rng) for _ in range(n_boot))])
    low, high = percentile_interval(reps, alpha)
    return {
        "estimate": float(fn(y, p)),
        "low": low,
        "high": high,
        "n_boot": int(np.isfinite(reps).sum()),
    }


def bootstrap_label_intervals(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    label_names: Sequence[str],
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    metrics: Sequence[str] = ("auc", "average_precision"),
) -> dict[str, Any]:
    """CIs of each metric for every label and of the macro mean, from one shared set of
    patient-level replicates. Returns ``{"labels": {label: {metric: {...}}}, "macro": {...}}``."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    n, n_labels = y_true.shape
    sampler = ClusterSampler(groups, n=n)
    rng = np.random.default_rng(seed)
    reps = np.full((n_boot, n_labels, len(metrics)), np.nan)
    for b in range(n_boot):
        idx = sampler.sample(rng)
        yb, pb = y_true[idx], y_prob[idx]
        for j in range(n_labels):
            keep = ~np.isnan(yb[:, j]) & ~np.isnan(pb[:, j])
            for k, name in enumerate(metrics):
                reps[b, j, k] = METRICS[name](yb[keep, j], pb[keep, j])
    out: dict[str, Any] = {"labels": {}, "macro": {}, "n_boot": n_boot, "alpha": alpha, "seed": seed}
    out["resampling"] = "patient" if groups is not None else "image"
    for j, label in enumerate(label_names):
        keep = ~np.isnan(y_true[:, j]) & ~np.isnan(y_prob[:, j])
        out["labels"][label] = {}
        for k, name in enumerate(metrics):
            low, high = percentile_interval(reps[:, j, k], alpha)
            estimate = METRICS[name](y_true[keep, j], y_prob[keep, j])
            out["labels"][label][name] = {"estimate": float(estimate), "low": low, "high": high}
    for k, name in enumerate(metrics):
        with np.errstate(all="ignore"):
            defined = ~np.all(np.isnan(reps[:, :, k]), axis=1)
            macro_reps = np.full(n_boot, np.nan)
            macro_reps[defined] = np.nanmean(reps[defined, :, k], axis=1)
        estimates = [out["labels"][lab][name]["estimate"] for lab in label_names]
        low, high = percentile_interval(macro_reps, alpha)
        finite = [e for e in estimates if np.isfinite(e)]
        out["macro"][name] = {
            "estimate": float(np.mean(finite)) if finite else float("nan"),
            "low": low,
            "high": high,
        }
    return out


def paired_bootstrap_difference(
    y_true: np.ndarray,
    prob_a: np.ndarray,
    prob_b: np.ndarray,
    metric: str | MetricFn = "auc",
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Difference metric(a) - metric(b) on the same images, its CI, bootstrap standard error and
    a two-sided p-value (twice the share of replicates on the other side of zero)."""
    fn = METRICS[metric] if isinstance(metric, str) else metric
    y = np.asarray(y_true, dtype=np.float64)
    a = np.asarray(prob_a, dtype=np.float64)
    b = np.asarray(prob_b, dtype=np.float64)
    keep = ~np.isnan(y) & ~np.isnan(a) & ~np.isnan(b)
    y, a, b = y[keep], a[keep], b[keep]
    g = None if groups is None else np.asarray(groups)[keep]
    sampler = ClusterSampler(g, n=len(y))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = sampler.sample(rng)
        diffs[i] = fn(y[idx], a[idx]) - fn(y[idx], b[idx])
    finite = diffs[np.isfinite(diffs)]
    low, high = percentile_interval(finite, alpha)
    if finite.size:
        p = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0)))
        se = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    else:
        p, se = float("nan"), float("nan")
    return {
        "difference": float(fn(y, a) - fn(y, b)),
        "low": low,
        "high": high,
        "se": se,
        "p_value": float(p),
        "n_boot": int(finite.size),
    }
