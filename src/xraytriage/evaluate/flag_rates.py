"""The critical tier's thresholds and the flag rates a calibrated model is expected to show.

Both are chosen on held-out (out-of-fold) predictions, after calibration, like the other
operating points (``calibrate``):

* :func:`critical_thresholds`: a critical finding (Pneumothorax by default) gets its own
  high-specificity threshold (99% of the images without it stay below), never below the
  finding's ordinary threshold, so the critical badge is rarer than the finding itself.
* :func:`expected_rates`: the share of studies the service should see flagged, with each
  finding listed, and critical, at the deployment prevalence: ``pi * rate among abnormal +
  (1 - pi) * rate among normal`` (the calibration set's own mix when no prevalence is given).
  Stored as the checkpoint's ``expected_rates``; the service's drift monitor
  (``serving.drift``) compares its rolling rates with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xraytriage.errors import ConfigError
from xraytriage.evaluate.operating_points import specificity_threshold
from xraytriage.labels import abnormal_target, canonical_label
from xraytriage.stats import known_rows

DEFAULT_CRITICAL = ("Pneumothorax",)
DEFAULT_CRITICAL_SPECIFICITY = 0.99


def resolve_critical(names: Sequence[str], requested: Sequence[str], label_names: Sequence[str]) -> list[str]:
    """The model's spelling of each requested critical finding; ``none`` alone means no
    critical tier; nothing requested means the defaults the model has."""
    if [r.strip().lower() for r in requested] == ["none"]:
        return []
    by_key = {canonical_label(n): n for n in names}
    if not requested:
        return [by_key[canonical_label(n)] for n in DEFAULT_CRITICAL if canonical_label(n) in by_key]
    out = []
    for item in requested:
        key = canonical_label(item.strip())
        if key not in by_key:
            raise ConfigError(
                f"--critical {item!r}: the model has no such finding (its findings: {', '.join(names)})"
            )
        out.append(by_key[key])
    return list(dict.fromkeys(out))


def critical_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    label_names: Sequence[str],
    critical: Sequence[str],
    thresholds: Mapping[str, float],
    specificity: float = DEFAULT_CRITICAL_SPECIFICITY,
    required: bool = True,
) -> dict[str, float]:
    """{finding: threshold} at ``specificity`` among the images without the finding (calibrated
    held-out probabilities), at least the finding's ordinary threshold. A finding with no
    known negative is an error when ``required`` (asked for by name), else left out (a default).
    ``y_true`` / ``y_score``: (N, L) labels and probabilities, columns ``label_names``."""
    if not 0.5 <= specificity < 1:
        raise ConfigError(f"critical specificity must be in [0.5, 1), got {specificity}")
    names = list(label_names)
    out = {}
    for name in critical:
        j = names.index(name)
        y = y_true[:, j]
        known = known_rows(y)
        if not (known.any() and (y[known] == 0).any()):
            if not required:
                continue
            raise ConfigError(
                f"critical finding {name!r}: no held-out image without it to set a threshold on"
            )
        t = specificity_threshold(y[known], y_score[known, j], target=specificity)
        out[name] = float(max(t, float(thresholds.get(name, 0.0))))
    return out


def _rate(hit: np.ndarray, abnormal: np.ndarray, prevalence: float | None) -> float:
    """Share of ``hit`` rows, mixed to ``prevalence`` of abnormal rows when given."""
    if prevalence is None:
        return float(hit.mean())
    abn, nor = hit[abnormal == 1], hit[abnormal == 0]
    if abn.size == 0 or nor.size == 0:
        return float(hit.mean())
    return float(prevalence * abn.mean() + (1 - prevalence) * nor.mean())


def expected_rates(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    abnormal_score: np.ndarray,
    label_names: Sequence[str],
    findings: Sequence[str],
    thresholds: Mapping[str, float],
    flag_at: float | None,
    critical: Mapping[str, float],
    prevalence: float | None = None,
    source: str = "",
) -> dict[str, Any]:
    """The checkpoint's ``expected_rates``: ``{"flagged": r, "findings": {name: r},
    "critical": r, "n": images, "prevalence": pi, "source": ...}`` (see the module docstring).
    ``y_true`` / ``y_score``: (N, L) labels and probabilities; ``abnormal_score``: (N,)
    P(abnormal)."""
    names = list(label_names)
    probs = np.asarray(y_score, dtype=np.float64)
    abnormal = abnormal_target(y_true, names)
    keep = known_rows(abnormal)
    if prevalence is None or not keep.any():  # nothing to mix by: the images' own share
        prevalence, keep = None, np.ones(len(probs), dtype=bool)
    probs, abnormal, p_abn = probs[keep], abnormal[keep], np.asarray(abnormal_score, dtype=np.float64)[keep]
    if len(probs) == 0:
        raise ConfigError("no held-out image to expect flag rates from")
    hits = {n: probs[:, names.index(n)] >= float(thresholds[n]) for n in findings}
    any_finding = (
        np.any(np.stack(list(hits.values()), axis=1), axis=1) if hits else np.zeros(len(probs), bool)
    )
    flagged = p_abn >= flag_at if flag_at is not None else any_finding
    crit = np.zeros(len(probs), dtype=bool)
    for name, t in critical.items():
        crit |= probs[:, names.index(name)] >= float(t)
    return {
        "flagged": _rate(flagged, abnormal, prevalence),
        "findings": {n: _rate(h, abnormal, prevalence) for n, h in hits.items()},
        "critical": _rate(crit, abnormal, prevalence),
        "n": len(probs),
        "prevalence": prevalence,
        "source": source,
    }
