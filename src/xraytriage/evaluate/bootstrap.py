"""Bootstrap confidence intervals with patient-level (cluster) resampling.

Images of one patient are correlated, so resampling images would make intervals too narrow.
Each replicate draws *patients* with replacement and takes all their images; every label and
every compared model sees the same replicate (paired). Seeded, so reports are reproducible.

A replicate is represented by how many times each image was drawn (its weight). AUC and
average precision of a replicate are then computed from data sorted once (weighted
Mann-Whitney and weighted precision-at-each-threshold), giving exactly the numbers sklearn gives
on the resampled arrays (tests check) at a fraction of the cost: 1000 replicates of 14 labels
take about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.evaluate.metrics import rank_auc, step_average_precision
from xraytriage.stats import known_rows

MetricFn = Callable[[np.ndarray, np.ndarray], float]

METRICS: dict[str, MetricFn] = {"auc": rank_auc, "average_precision": step_average_precision}
"""Point-estimate functions (equal to sklearn's roc_auc_score / average_precision_score)."""


class ClusterSampler:
    """Draws bootstrap replicates that keep each group (patient) whole.

    ``groups=None`` makes every row its own group (plain image-level bootstrap).
    """

    def __init__(self, groups: Sequence[Any] | np.ndarray | None, n: int | None = None) -> None:
        if groups is None:
            if n is None:
                raise ValueError("give groups or n")
            codes = np.arange(n)
        else:
            codes, _ = pd.factorize(pd.Series(np.asarray(groups)).astype(str))
        self.codes = codes
        self.n_rows = len(codes)
        self.order = np.argsort(codes, kind="stable")
        self.counts = np.bincount(codes)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.n_groups = len(self.counts)

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.n_groups, size=self.n_groups)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """Row indices of one replicate: ``n_groups`` groups drawn with replacement."""
        chosen = self._draw(rng)
        lengths = self.counts[chosen]
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        within = np.arange(lengths.sum()) - offsets
        return self.order[np.repeat(self.starts[chosen], lengths) + within]

    def weights(self, rng: np.random.Generator) -> np.ndarray:
        """How often each row appears in one replicate (same draw as :meth:`sample`)."""
        times_drawn = np.bincount(self._draw(rng), minlength=self.n_groups)
        return times_drawn[self.codes].astype(np.float64)


class WeightedRanking:
    """One label's known (label, score) pairs, sorted once; AUC and AP for any row weights."""

    def __init__(self, y_true: np.ndarray, y_score: np.ndarray) -> None:
        order = np.argsort(-np.asarray(y_score, dtype=np.float64), kind="mergesort")  # descending
        sp = np.asarray(y_score, dtype=np.float64)[order]
        self.order = order
        self.tie_group = np.r_[0, np.cumsum(np.diff(sp) != 0)] if len(sp) else np.zeros(0, dtype=np.int64)
        self.n_ties = int(self.tie_group[-1]) + 1 if len(sp) else 0
        self.positive = (np.asarray(y_true)[order] == 1).astype(np.float64)

    def _group_weights(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = weights[self.order]
        pos = np.bincount(self.tie_group, w * self.positive, self.n_ties)
        neg = np.bincount(self.tie_group, w * (1.0 - self.positive), self.n_ties)
        return pos, neg

    def auc(self, weights: np.ndarray) -> float:
        """Weighted Mann-Whitney: P(score of a positive > a negative), ties count 1/2."""
        pos, neg = self._group_weights(weights)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return float("nan")
        neg_below = total_neg - np.cumsum(neg)  # groups are in descending score order
        return float((pos * (neg_below + 0.5 * neg)).sum() / (total_pos * total_neg))

    def average_precision(self, weights: np.ndarray) -> float:
        """sum over thresholds of (recall gained) x (precision there), as sklearn defines AP."""
        pos, neg = self._group_weights(weights)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos == 0 or total_neg == 0:
            return float("nan")
        tp = np.cumsum(pos)
        predicted = tp + np.cumsum(neg)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        return float((pos / total_pos * precision).sum())


def _replicate_scorer(metric: str | MetricFn, y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray], float]:
    """weights -> metric of that replicate."""
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown bootstrap metric {metric!r}; choose from {', '.join(METRICS)}")
        return getattr(WeightedRanking(y, p), metric)
    counts = lambda w: w.astype(np.int64)  # noqa: E731
    return lambda w: metric(np.repeat(y, counts(w)), np.repeat(p, counts(w)))


def _point(metric: str | MetricFn, y: np.ndarray, p: np.ndarray) -> float:
    return float(METRICS[metric](y, p) if isinstance(metric, str) else metric(y, p))


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
    y_score: np.ndarray,
    *,
    metric: str | MetricFn = "auc",
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Point estimate and percentile CI of one metric on one label (NaN labels dropped first)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_score, dtype=np.float64)
    keep = known_rows(y, p)
    y, p = y[keep], p[keep]
    sampler = ClusterSampler(None if groups is None else np.asarray(groups)[keep], n=len(y))
    score = _replicate_scorer(metric, y, p)
    rng = np.random.default_rng(seed)
    reps = np.array([score(sampler.weights(rng)) for _ in range(n_boot)])
    low, high = percentile_interval(reps, alpha)
    return {
        "estimate": _point(metric, y, p),
        "low": low,
        "high": high,
        "n_boot": int(np.isfinite(reps).sum()),
    }


def bootstrap_label_intervals(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    label_names: Sequence[str],
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    metrics: Sequence[str] = ("auc", "average_precision"),
    means: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """CIs of each metric for every label, of the macro mean (all labels) and of each named
    mean (``{name: labels it averages}``, see :mod:`xraytriage.auc_means`), from one shared set
    of patient-level replicates. Returns ``{"labels": {label: {metric: {...}}}, "macro": {...},
    "means": {name: {metric: {...}}}}``."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    n, n_labels = y_true.shape
    sampler = ClusterSampler(groups, n=n)
    keeps = [known_rows(y_true[:, j], y_score[:, j]) for j in range(n_labels)]
    rankings = [WeightedRanking(y_true[k, j], y_score[k, j]) for j, k in enumerate(keeps)]
    rng = np.random.default_rng(seed)
    reps = np.full((n_boot, n_labels, len(metrics)), np.nan)
    for b in range(n_boot):
        w = sampler.weights(rng)
        for j, ranking in enumerate(rankings):
            wj = w[keeps[j]]
            for k, name in enumerate(metrics):
                reps[b, j, k] = getattr(ranking, name)(wj)
    out: dict[str, Any] = {"labels": {}, "macro": {}, "n_boot": n_boot, "alpha": alpha, "seed": seed}
    out["resampling"] = "patient" if groups is not None else "image"
    for j, label in enumerate(label_names):
        out["labels"][label] = {}
        for k, name in enumerate(metrics):
            low, high = percentile_interval(reps[:, j, k], alpha)
            estimate = _point(name, y_true[keeps[j], j], y_score[keeps[j], j])
            out["labels"][label][name] = {"estimate": estimate, "low": low, "high": high}
    for k, name in enumerate(metrics):
        out["macro"][name] = _mean_interval(reps[:, :, k], out["labels"], list(label_names), name, alpha)
    out["means"] = {}
    for mean_name, members in (means or {}).items():
        columns = [list(label_names).index(m) for m in members]
        out["means"][mean_name] = {
            name: _mean_interval(reps[:, columns, k], out["labels"], members, name, alpha)
            for k, name in enumerate(metrics)
        }
    return out


def _mean_interval(
    reps: np.ndarray, per_label: Mapping[str, Any], members: Sequence[str], metric: str, alpha: float
) -> dict[str, float]:
    """Estimate (mean of the defined label estimates) and percentile CI of the mean over labels
    of (replicates x labels) values."""
    defined = ~np.all(np.isnan(reps), axis=1)
    mean_reps = np.full(reps.shape[0], np.nan)
    mean_reps[defined] = np.nanmean(reps[defined], axis=1)
    finite = [
        per_label[m][metric]["estimate"] for m in members if np.isfinite(per_label[m][metric]["estimate"])
    ]
    low, high = percentile_interval(mean_reps, alpha)
    return {"estimate": float(np.mean(finite)) if finite else float("nan"), "low": low, "high": high}


def paired_bootstrap_difference(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    y_score_b: np.ndarray,
    metric: str | MetricFn = "auc",
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Difference metric(``y_score``) - metric(``y_score_b``) on the same images, its CI, bootstrap standard error and
    a two-sided p-value (twice the share of replicates on the other side of zero)."""
    y = np.asarray(y_true, dtype=np.float64)
    a = np.asarray(y_score, dtype=np.float64)
    b = np.asarray(y_score_b, dtype=np.float64)
    keep = known_rows(y, a, b)
    y, a, b = y[keep], a[keep], b[keep]
    sampler = ClusterSampler(None if groups is None else np.asarray(groups)[keep], n=len(y))
    score_a, score_b = _replicate_scorer(metric, y, a), _replicate_scorer(metric, y, b)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        w = sampler.weights(rng)
        diffs[i] = score_a(w) - score_b(w)
    finite = diffs[np.isfinite(diffs)]
    low, high = percentile_interval(finite, alpha)
    if finite.size:
        p = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0)))
        se = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    else:
        p, se = float("nan"), float("nan")
    return {
        "difference": _point(metric, y, a) - _point(metric, y, b),
        "low": low,
        "high": high,
        "se": se,
        "p_value": float(p),
        "n_boot": int(finite.size),
    }
