"""Calibration: how far predicted probabilities are from observed frequencies, and fixing it.

Expected calibration error and reliability-diagram bins measure it. Temperature scaling
(one divisor T of the logit) and Platt scaling (a*logit + b) are fitted on *validation*
logits per label and stored in the checkpoint's ``calibration`` field, which
``Checkpoint.probabilities`` applies to raw logits, with thresholds chosen on the calibrated
validation probabilities.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.linear_model import LogisticRegression

from xraytriage.errors import ConfigError
from xraytriage.evaluate.metrics import has_both_classes, valid_pairs
from xraytriage.evaluate.operating_points import cap_normal_flag_rate, choose_thresholds, normal_flag_rate
from xraytriage.labels import abnormal_target
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.stats import known_rows

CALIBRATION_METHODS = ("temperature", "platt")


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]; 1.0 falls in the last bin (as sklearn's calibration_curve)."""
    return np.clip(np.floor(p * n_bins).astype(int), 0, n_bins - 1)


def reliability_table(y_true: np.ndarray, y_score: np.ndarray, *, n_bins: int = 10) -> pd.DataFrame:
    """One row per non-empty bin: bin edges, count, mean predicted probability, observed frequency."""
    y, p = valid_pairs(y_true, y_score)
    idx = _bin_index(p, n_bins)
    rows = []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            rows.append(
                {
                    "bin": b,
                    "low": b / n_bins,
                    "high": (b + 1) / n_bins,
                    "count": int(sel.sum()),
                    "mean_predicted": float(p[sel].mean()),
                    "fraction_positive": float(y[sel].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["bin", "low", "high", "count", "mean_predicted", "fraction_positive"])


def expected_calibration_error(y_true: np.ndarray, y_score: np.ndarray, *, n_bins: int = 10) -> float:
    """ECE = sum over bins of (share of cases) * |observed frequency - mean probability|."""
    table = reliability_table(y_true, y_score, n_bins=n_bins)
    if table.empty:
        return float("nan")
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["fraction_positive"] - table["mean_predicted"]).abs()).sum())


def logit(p: np.ndarray, *, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    # binary cross-entropy from logits, numerically stable
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Temperature T > 0 minimising the validation NLL of sigmoid(logit / T). ``y_score`` holds
    the raw *logits* (not probabilities)."""
    y, z = valid_pairs(y_true, y_score)
    if not has_both_classes(y):
        return 1.0
    result = minimize_scalar(
        lambda log_t: _nll(z / np.exp(log_t), y), bounds=(np.log(0.05), np.log(20.0)), method="bounded"
    )
    return float(np.exp(result.x))


def fit_platt(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float]:
    """Platt scaling: unregularised logistic regression of the label on the logit -> (a, b).
    ``y_score`` holds the raw *logits* (not probabilities)."""
    y, z = valid_pairs(y_true, y_score)
    if not has_both_classes(y):
        return 1.0, 0.0
    model = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(z[:, None], y.astype(int))
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def fit_calibration(
    y_true: np.ndarray, y_score: np.ndarray, *, label_names: Sequence[str], method: str = "temperature"
) -> dict[str, dict[str, Any]]:
    """Per-label calibration entries in the checkpoint format, fitted on the raw *logits*
    ``y_score`` (N, L) against ``y_true`` (N, L)."""
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}; got {method!r}")
    logits = np.asarray(y_score, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(label_names):
        if method == "temperature":
            out[name] = {"method": "temperature", "t": fit_temperature(y_true[:, j], logits[:, j])}
        else:
            a, b = fit_platt(y_true[:, j], logits[:, j])
            out[name] = {"method": "platt", "a": a, "b": b}
    return out


def _cap_findings(
    checkpoint: Checkpoint, labels: np.ndarray, probs: np.ndarray, max_rate: float
) -> dict[str, float]:
    """Raise the findings' thresholds (in place) so that at most ``max_rate`` of the normal
    images get any finding flagged; returns what was done, for the checkpoint's record."""
    names = list(checkpoint.label_names)
    findings = checkpoint.findings
    idx = [names.index(n) for n in findings]
    abnormal = abnormal_target(labels, names)
    normal = abnormal == 0
    before = normal_flag_rate(
        abnormal, probs[:, idx], thresholds=np.array([checkpoint.thresholds[n] for n in findings])
    )
    capped, floor = cap_normal_flag_rate(
        labels[:, idx],
        probs[:, idx],
        normal=normal,
        label_names=findings,
        thresholds={n: checkpoint.thresholds[n] for n in findings},
        max_rate=max_rate,
    )
    checkpoint.thresholds.update(capped)
    after = normal_flag_rate(abnormal, probs[:, idx], thresholds=np.array([capped[n] for n in findings]))
    return {
        "max_rate": max_rate,
        "normal_images": int(normal.sum()),
        "rate_before": before,
        "rate_after": after,
        "specificity_floor": floor,
    }


def prior_shift(calibration_prevalence: float, deployment_prevalence: float) -> float:
    """Logit offset that moves probabilities calibrated at one prevalence to another (Bayes'
    rule with unchanged likelihoods; Saerens et al. 2002): the ranking is unchanged."""
    for value in (calibration_prevalence, deployment_prevalence):
        if not 0 < value < 1:
            raise ConfigError(f"prevalence must be in (0, 1), got {value}")
    return float(logit(np.asarray(deployment_prevalence)) - logit(np.asarray(calibration_prevalence)))


def calibrate_checkpoint(
    checkpoint: Checkpoint,
    *,
    y_true: np.ndarray,
    y_score: np.ndarray,
    method: str = "temperature",
    threshold_method: str = "youden",
    target: float = 0.9,
    label_targets: dict[str, float] | None = None,
    deployment_prevalence: dict[str, float] | None = None,
    max_normal_flag_rate: float | None = None,
) -> Checkpoint:
    """A copy of ``checkpoint`` with calibration fitted on validation *raw* logits (``y_score``)
    against the validation labels (``y_true``) and thresholds chosen on the resulting calibrated
    validation probabilities. Labels of the checkpoint are the columns of both arrays.

    ``deployment_prevalence`` ({label: prevalence}) moves those labels' probabilities from the
    validation set's prevalence to the stated one (e.g. Abnormal 0.46, the NIH population), so
    the worklist's P(abnormal) means what it says at the site. ``max_normal_flag_rate`` raises
    the findings' thresholds together until at most that share of the validation's normal
    images (No Finding) has any finding flagged."""
    names = list(checkpoint.label_names)
    val_labels, val_logits = y_true, y_score
    calibrated = copy.copy(checkpoint)
    calibrated.calibration = fit_calibration(val_labels, val_logits, label_names=names, method=method)
    shifts: dict[str, dict[str, float]] = {}
    for name, prevalence in (deployment_prevalence or {}).items():
        if name not in names:
            raise ConfigError(f"deployment prevalence for {name!r}: the model has no such output")
        column = val_labels[:, names.index(name)]
        known = column[known_rows(column)]
        observed = float(known.mean()) if known.size else float("nan")
        shift = prior_shift(observed, prevalence)
        calibrated.calibration[name] = {**calibrated.calibration[name], "shift": shift}
        shifts[name] = {
            "calibration_prevalence": observed,
            "deployment_prevalence": prevalence,
            "shift": shift,
        }
    probs = calibrated.probabilities(val_logits)
    calibrated.thresholds = choose_thresholds(
        val_labels,
        probs,
        label_names=names,
        method=threshold_method,
        target=target,
        label_targets=label_targets,
    )
    normal_cap = None
    if max_normal_flag_rate is not None:
        normal_cap = _cap_findings(calibrated, val_labels, probs, max_normal_flag_rate)
    calibrated.metrics = {
        **checkpoint.metrics,
        "calibration": {
            "method": method,
            "thresholds": threshold_method
            if threshold_method not in ("sensitivity", "specificity")
            else f"{threshold_method}:{target:g}",
            "label_targets": dict(label_targets or {}),
            "deployment_prevalence": shifts,
            "normal_flag_cap": normal_cap,
            "validation_images": len(val_labels),
            "ece_before": {
                n: expected_calibration_error(val_labels[:, j], checkpoint.probabilities(val_logits)[:, j])
                for j, n in enumerate(names)
            },
            "ece_after": {
                n: expected_calibration_error(val_labels[:, j], probs[:, j]) for j, n in enumerate(names)
            },
        },
    }
    return calibrated
