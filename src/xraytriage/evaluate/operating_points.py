"""Operating thresholds chosen on a validation set (never on the test set they are reported on).

Four rules, each a one-liner over scikit-learn's curves:
``youden`` maximises sensitivity + specificity - 1, ``sensitivity`` takes the highest threshold
that still reaches a target sensitivity (a screening tool must not miss), ``specificity`` the
lowest threshold that keeps a target specificity (a worklist must not flag most normal
studies: the default for shipped models, 0.90), ``f1`` maximises F1.

:func:`cap_normal_flag_rate` then raises the findings' thresholds together until at most a
given share of normal ("No Finding") images has any finding flagged: 14 labels at 90%
specificity each can still flag far more than 10% of normal studies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from xraytriage.errors import ConfigError
from xraytriage.evaluate.metrics import has_both_classes, valid_pairs
from xraytriage.stats import youden_threshold  # shared with train; re-exported here

METHODS = ("youden", "sensitivity", "specificity", "f1")
DEFAULT_TARGETS = {"sensitivity": 0.9, "specificity": 0.9}


def sensitivity_threshold(y_true: np.ndarray, y_score: np.ndarray, *, target: float = 0.9) -> float:
    """Highest threshold whose sensitivity (``prob >= t``) is at least ``target``."""
    if not 0 < target <= 1:
        raise ConfigError(f"target sensitivity must be in (0, 1], got {target}")
    y, p = valid_pairs(y_true, y_score)
    _, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    ok = np.flatnonzero((tpr >= target - 1e-12) & np.isfinite(thr))
    return float(thr[ok[0]]) if ok.size else float(np.min(p))


def specificity_threshold(y_true: np.ndarray, y_score: np.ndarray, *, target: float = 0.9) -> float:
    """Lowest threshold whose specificity (negatives with ``prob < t``) is at least ``target``:
    the most sensitive operating point that keeps false alarms at ``1 - target``."""
    if not 0 < target <= 1:
        raise ConfigError(f"target specificity must be in (0, 1], got {target}")
    y, p = valid_pairs(y_true, y_score)
    negatives = np.sort(p[y == 0])
    if negatives.size == 0:
        return float(np.max(p)) if p.size else 0.5
    # the k-th lowest negative stays below t when t is just above it; k = ceil(target * n)
    k = int(np.ceil(target * negatives.size - 1e-9))
    if k <= 0:
        return float(negatives[0])
    below = negatives[k - 1]
    above = negatives[k] if k < negatives.size else below
    return float(np.nextafter(below, np.inf)) if above <= below else float((below + above) / 2)


def f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Threshold maximising F1 on the precision-recall curve."""
    y, p = valid_pairs(y_true, y_score)
    precision, recall, thr = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(thr[int(np.argmax(f1))])


def choose_threshold(
    y_true: np.ndarray, y_score: np.ndarray, *, method: str = "youden", target: float = 0.9
) -> float:
    """One label's threshold by ``method`` (youden | sensitivity | f1); 0.5 without both classes."""
    y, _ = valid_pairs(y_true, y_score)
    if not has_both_classes(y):
        return 0.5
    if method == "youden":
        return youden_threshold(y_true, y_score)
    if method == "sensitivity":
        return sensitivity_threshold(y_true, y_score, target=target)
    if method == "specificity":
        return specificity_threshold(y_true, y_score, target=target)
    if method == "f1":
        return f1_threshold(y_true, y_score)
    raise ConfigError(f"operating point method must be one of {', '.join(METHODS)}; got {method!r}")


def parse_method(spec: str) -> tuple[str, float]:
    """``"youden"``, ``"f1"``, ``"sensitivity[:0.95]"`` or ``"specificity[:0.9]"`` -> (method, target)."""
    method, _, value = spec.partition(":")
    method = method.strip().lower()
    if method not in METHODS:
        raise ConfigError(
            f"operating point must be one of {', '.join(METHODS)} (sensitivity:0.9, specificity:0.9); got {spec!r}"
        )
    try:
        target = float(value) if value else DEFAULT_TARGETS.get(method, 0.9)
    except ValueError:
        raise ConfigError(f"bad target in {spec!r}") from None
    if not 0 < target <= 1:
        raise ConfigError(f"operating point target must be in (0, 1], got {spec!r}")
    return method, target


def parse_label_targets(specs: Sequence[str]) -> dict[str, float]:
    """``["Pneumothorax=0.8", "Mass=0.95"]`` -> per-label targets overriding the default."""
    from xraytriage.labels import canonical_label

    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.rpartition("=")
        try:
            target = float(value)
        except ValueError:
            target = -1.0
        if not sep or not name.strip() or not 0 < target <= 1:
            raise ConfigError(
                f"per-label target must look like 'Finding=0.9' with 0 < target <= 1, got {spec!r}"
            )
        out[canonical_label(name.strip())] = target
    return out


def choose_thresholds(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    label_names: Sequence[str],
    method: str = "youden",
    target: float = 0.9,
    label_targets: dict[str, float] | None = None,
) -> dict[str, float]:
    """Per-label thresholds {label: t} chosen on validation labels/probabilities (N, L);
    ``label_targets`` overrides ``target`` for some labels (sensitivity/specificity rules)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    targets = label_targets or {}
    return {
        name: choose_threshold(y_true[:, j], y_score[:, j], method=method, target=targets.get(name, target))
        for j, name in enumerate(label_names)
    }


def normal_flag_rate(y_true: np.ndarray, y_score: np.ndarray, *, thresholds: np.ndarray) -> float:
    """Share of normal rows (``y_true`` 0; 1 = abnormal, NaN = unknown, neither counted) with at
    least one column of ``y_score`` (N, L) at or above its threshold."""
    normal = np.asarray(y_true, dtype=np.float64) == 0
    if not normal.any():
        return float("nan")
    flagged = (np.asarray(y_score)[normal] >= np.asarray(thresholds)[None, :]).any(axis=1)
    return float(flagged.mean())


def cap_normal_flag_rate(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    normal: np.ndarray,
    label_names: Sequence[str],
    thresholds: dict[str, float],
    max_rate: float,
) -> tuple[dict[str, float], float]:
    """Raise every label's threshold to at least its ``q``-quantile among *its own negatives*,
    with one common ``q`` (a common specificity floor) found by bisection, so that at most
    ``max_rate`` of the ``normal`` rows get any label flagged. Returns the new thresholds and
    the common specificity floor used (the original target when no raise was needed)."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_score, dtype=np.float64)
    base = np.array([thresholds[n] for n in label_names], dtype=np.float64)
    abnormal = np.where(np.asarray(normal, dtype=bool), 0.0, 1.0)  # normal_flag_rate counts the 0s

    def at(q: float) -> np.ndarray:
        floor = np.array([specificity_threshold(y[:, j], p[:, j], target=q) for j in range(len(label_names))])
        return np.maximum(base, floor)

    if normal_flag_rate(abnormal, p, thresholds=base) <= max_rate:
        return dict(thresholds), float("nan")
    lo, hi = 0.5, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if normal_flag_rate(abnormal, p, thresholds=at(mid)) <= max_rate:
            hi = mid
        else:
            lo = mid
    final = at(hi)
    return {n: float(t) for n, t in zip(label_names, final, strict=True)}, hi


def all_operating_points(
    y_true: np.ndarray, y_score: np.ndarray, *, label_names: Sequence[str], target: float = 0.9
) -> dict[str, dict[str, float]]:
    """{method: {label: threshold}} for every method (sensitivity at ``target``)."""
    return {
        method: choose_thresholds(y_true, y_score, label_names=label_names, method=method, target=target)
        for method in METHODS
    }
