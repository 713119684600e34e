"""Site calibration: operating thresholds from a site's own normal studies.

A model's thresholds are set on its training population. At another site (other detectors,
other post-processing, another population) the same probabilities shift, and a finding set
at 90% specificity on NIH can fire on a third of the site's normal films. What a site always
has is a few hundred studies its radiologists reported as normal. On those, each finding's
threshold is set so that it fires on at most ``finding_rate`` of them, lowered together (one
shared rate ``q <= finding_rate``) until at most ``any_rate`` of them list any finding.

The study flag: by default a site-calibrated study is flagged when a finding is listed
(``flag_by="findings"``; the any-finding cap is then at most ``flag_rate`` too), so every flag
names its finding. At a new site the findings, set on its own normals, separate better than
P(abnormal) at the same false-flag rate (measured on the pediatric site: docs/deploying.md).
``flag_by="abnormal"`` keeps the model's rule instead (P(abnormal) at or above the study
threshold, set so that at most ``flag_rate`` of the normals reach it). Either way the model's
ranking is kept: only thresholds move (the probabilities stay as they are).

The rates are shares of the site's normals, so they estimate the false-positive rates the
site will see, with the sampling error of a sample of that size (reported: the 95% Wilson
interval of each rate, and warnings when the sample is too small for the rate asked).

The service's drift monitor gets its expected rates from the same images
(:func:`site_expected_rates`): among the normals (a floor for a worklist that also holds
abnormal studies), or, with a labelled sample, mixed at a prevalence. Critical thresholds are
kept at or above their finding's new threshold (:func:`raise_critical`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xraytriage.errors import ConfigError

DEFAULT_FINDING_RATE = 0.01
DEFAULT_ANY_RATE = 0.10
DEFAULT_FLAG_RATE = 0.10
MIN_NORMALS = 100
"""Fewer normal images than this: the rates are too uncertain to rely on (warned)."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sensible at 0 and n, unlike the normal one)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def rate_threshold(values: np.ndarray, rate: float) -> float:
    """The lowest threshold at which at most ``rate`` of ``values`` are at or above it
    (``value >= t`` fires): just above the ``floor(rate * n) + 1``-th highest value."""
    return count_threshold(values, int(np.floor(rate * len(values) + 1e-9)))


def count_threshold(values: np.ndarray, allowed: int) -> float:
    """The lowest threshold at which at most ``allowed`` of ``values`` fire (``>= t``)."""
    values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    if len(values) == 0:
        return 1.0
    if allowed >= len(values):
        return float(values[-1])
    return float(np.nextafter(values[max(allowed, 0)], np.inf))


def _any_rate(probs: np.ndarray, thresholds: np.ndarray) -> float:
    return float(np.mean(np.any(probs >= thresholds, axis=1))) if len(probs) else 0.0


@dataclass
class SiteCalibration:
    """New thresholds and what they are expected to do on the site's normal studies."""

    thresholds: dict[str, float]
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def site_thresholds(
    probs: np.ndarray,
    abnormal: np.ndarray,
    findings: Sequence[str],
    study_label: str | None,
    finding_rate: float = DEFAULT_FINDING_RATE,
    any_rate: float = DEFAULT_ANY_RATE,
    flag_rate: float = DEFAULT_FLAG_RATE,
) -> SiteCalibration:
    """Thresholds from the calibrated probabilities of a site's normal images.

    ``probs``: (N, F) probabilities of ``findings``; ``abnormal``: (N,) P(abnormal);
    ``study_label``: the label whose threshold flags a study (Abnormal), or None when a study
    is flagged by any listed finding (then the any-finding cap is at most ``flag_rate`` too).
    """
    for name, rate in (("finding", finding_rate), ("any-finding", any_rate), ("flag", flag_rate)):
        if not 0 < rate < 1:
            raise ConfigError(f"the {name} rate must be in (0, 1), got {rate}")
    probs = np.asarray(probs, dtype=np.float64)
    n = len(probs)
    if n == 0:
        raise ConfigError("site calibration needs at least one readable normal image")
    cap = any_rate if study_label else min(any_rate, flag_rate)
    per_finding = min(finding_rate, cap)

    def at(q: float) -> np.ndarray:
        return np.array([rate_threshold(probs[:, j], q) for j in range(probs.shape[1])])

    # the largest shared per-finding rate q <= finding_rate whose any-finding rate keeps the cap
    # (the any-finding rate only grows with q: bisect on q)
    low, high = 0.0, per_finding
    if _any_rate(probs, at(high)) > cap:
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if _any_rate(probs, at(mid)) <= cap else (low, mid)
        per_finding = low
    finding_thresholds = at(per_finding)
    thresholds = {name: float(t) for name, t in zip(findings, finding_thresholds, strict=True)}
    fires = probs >= finding_thresholds
    any_count = int(np.any(fires, axis=1).sum())
    report: dict[str, Any] = {
        "normal_images": n,
        "finding_rate_asked": finding_rate,
        "finding_rate_used": per_finding,
        "any_finding_rate_asked": any_rate,
        "flag_rate_asked": flag_rate,
        "findings": {
            name: {
                "threshold": thresholds[name],
                "normals_listed": int(fires[:, j].sum()),
                "rate": float(fires[:, j].mean()),
                "rate_ci95": wilson_interval(int(fires[:, j].sum()), n),
            }
            for j, name in enumerate(findings)
        },
        "any_finding": {
            "normals": any_count,
            "rate": any_count / n,
            "rate_ci95": wilson_interval(any_count, n),
        },
    }
    flagged = np.any(fires, axis=1)
    if study_label:
        thresholds[study_label] = rate_threshold(abnormal, flag_rate)
        flagged = np.asarray(abnormal) >= thresholds[study_label]
        report["study_threshold"] = {"label": study_label, "threshold": thresholds[study_label]}
    report["flag_by"] = "abnormal" if study_label else "findings"
    flag_count = int(flagged.sum())
    report["flagged"] = {
        "normals": flag_count,
        "rate": flag_count / n,
        "rate_ci95": wilson_interval(flag_count, n),
    }
    warnings = sample_warnings(n, per_finding, any_rate, flag_rate)
    report["warnings"] = warnings
    return SiteCalibration(thresholds, report, warnings)


def sample_warnings(n: int, finding_rate: float, any_rate: float, flag_rate: float) -> list[str]:
    """What a sample of ``n`` normal images cannot promise."""
    out = []
    if n < MIN_NORMALS:
        out.append(
            f"only {n} normal images (at least {MIN_NORMALS} recommended, 200-300 better): "
            "the rates below are rough estimates"
        )
    if finding_rate * n < 1:
        out.append(
            f"a per-finding rate of {finding_rate:.1%} needs at least {int(np.ceil(1 / finding_rate))} normal "
            f"images to be measured; with {n} each finding is set above every normal image, and the "
            f"true rate can still be up to {wilson_interval(0, n)[1]:.1%} (95% upper bound)"
        )
    for name, rate in (("any finding", any_rate), ("flag", flag_rate)):
        upper = wilson_interval(int(np.floor(rate * n)), n)[1]
        if upper > 2 * rate:
            out.append(
                f"the {name} rate {rate:.0%} is uncertain with {n} normals: up to {upper:.0%} (95% bound)"
            )
    return out


def labelled_check(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    abnormal_score: np.ndarray,
    finding_truth: dict[str, np.ndarray],
    findings: Sequence[str],
    thresholds: dict[str, float],
    study_label: str | None,
) -> dict[str, Any]:
    """Sensitivity and specificity (95% Wilson intervals) of the new thresholds on a labelled
    sample: the study flag and "any finding listed" against normal/abnormal, and each named
    finding's own sensitivity where the labels name it. ``y_true``: (N,) abnormal (True) or
    normal; ``y_score``: (N, F) probabilities of ``findings``; ``abnormal_score``: (N,)
    P(abnormal)."""
    probs = np.asarray(y_score, dtype=np.float64)
    is_abnormal = np.asarray(y_true, dtype=bool)
    t = np.array([thresholds[name] for name in findings])
    listed = np.any(probs >= t, axis=1)
    flagged = np.asarray(abnormal_score) >= thresholds[study_label] if study_label else listed

    def share(hit: np.ndarray, among: np.ndarray) -> dict[str, Any]:
        k, n = int(hit[among].sum()), int(among.sum())
        return {"n": n, "hits": k, "rate": (k / n) if n else None, "ci95": wilson_interval(k, n)}

    out: dict[str, Any] = {
        "abnormal_images": int(is_abnormal.sum()),
        "normal_images": int((~is_abnormal).sum()),
        "flagged_sensitivity": share(flagged, is_abnormal),
        "any_finding_sensitivity": share(listed, is_abnormal),
        "flagged_false_positive_rate": share(flagged, ~is_abnormal),
        "any_finding_false_positive_rate": share(listed, ~is_abnormal),
        "findings": {},
    }
    for name, truth in finding_truth.items():
        if name in findings and truth.any():
            j = list(findings).index(name)
            out["findings"][name] = share(probs[:, j] >= t[j], truth.astype(bool))
    return out


NORMALS_ONLY = "normal"
"""``expected_rates["population"]`` when the rates are shares of normal studies only."""
SITE_MIX = "site"
"""... when normal and abnormal labelled studies were mixed at a prevalence."""


def site_expected_rates(
    listed: np.ndarray,
    flagged: np.ndarray,
    critical: np.ndarray,
    ood_scores: np.ndarray | None,
    findings: Sequence[str],
    is_abnormal: np.ndarray | None = None,
    prevalence: float | None = None,
    source: str = "",
) -> dict[str, Any]:
    """The checkpoint's ``expected_rates`` (the drift monitor's format, as
    :func:`xraytriage.evaluate.flag_rates.expected_rates`) from a site's own images.

    ``listed``: (N, F) findings listed at the new thresholds; ``flagged``, ``critical``: (N,);
    ``ood_scores``: (N,) or None (no OOD reference). Without ``is_abnormal`` the images are
    the site's normals and the rates are rates among normal studies (``population: normal``):
    a site's real worklist also holds abnormal studies, so the monitor takes them as a floor.
    With ``is_abnormal`` (a labelled sample) the rates among abnormal and normal images are
    mixed at ``prevalence`` (None: the sample's own mix; ``population: site``)."""
    from xraytriage.evaluate.flag_rates import _rate
    from xraytriage.models.ood import OOD_SCORE_LINE

    listed = np.asarray(listed, dtype=bool)
    n = len(listed)
    if n == 0:
        raise ConfigError("no site image to expect flag rates from")
    if is_abnormal is None:
        truth, prevalence, population = np.zeros(n), None, NORMALS_ONLY
    else:
        truth, population = np.asarray(is_abnormal, dtype=np.float64), SITE_MIX
        if prevalence is None:
            prevalence = float(truth.mean())

    def rate(hit: np.ndarray) -> float:
        return _rate(np.asarray(hit, dtype=bool), truth, prevalence)

    rates: dict[str, Any] = {
        "flagged": rate(flagged),
        "findings": {name: rate(listed[:, j]) for j, name in enumerate(findings)},
        "critical": rate(critical),
        "n": n,
        "prevalence": prevalence,
        "population": population,
        "source": source,
    }
    if ood_scores is not None:
        rates["ood"] = rate(np.asarray(ood_scores) >= OOD_SCORE_LINE)
    return rates


def raise_critical(
    critical: dict[str, float], thresholds: dict[str, float]
) -> dict[str, tuple[float, float]]:
    """Critical thresholds kept at or above their finding's (new) threshold, in place: a
    critical finding must be listed too. Returns ``{finding: (old, new)}`` of those raised."""
    raised = {}
    for name, t in critical.items():
        floor = thresholds.get(name)
        if floor is not None and float(floor) > float(t):
            raised[name] = (float(t), float(floor))
            critical[name] = float(floor)
    return raised
