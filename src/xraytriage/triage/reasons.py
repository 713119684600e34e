"""Why a study is flagged, and its tier: what a reader sees next to the red badge.

A flag without a reason is not trusted; a reason is either the findings at or above their
own thresholds (``"Effusion 0.81 >= 0.45; Mass 0.64 >= 0.10"``) or, when P(abnormal)
passes the study threshold although no single finding does, that sentence with both numbers.

Tiers (``worklist.sort_worklist`` and the service's SQL sort on :func:`tier_rank` first:
critical studies, together with the studies the site marked STAT, go before all others, and
among them STAT first, as its priority is 1.0; see ``triage.priority``):

* ``critical``: a finding that needs a radiologist now (the checkpoint's ``critical``
  mapping, ``{finding: threshold}``, each a high-specificity threshold chosen on
  out-of-fold predictions by ``calibrate --critical``) is at or above its critical threshold;
* ``flagged``: the study flag (P(abnormal) at or above the study threshold, or any finding
  when the model has no study threshold);
* ``routine``: everything else.

Checkpoints without a ``critical`` key (older files, published models) have no critical tier.
"""

from __future__ import annotations

from collections.abc import Mapping

TIER_CRITICAL = "critical"
TIER_FLAGGED = "flagged"
TIER_ROUTINE = "routine"
TIERS = (TIER_CRITICAL, TIER_FLAGGED, TIER_ROUTINE)


STAT = 1.0
"""The site priority of a STAT study (``triage.priority.SITE_PRIORITY_LEVELS``)."""


def tier_rank(tier: str | None, site_priority: float | None = None) -> int:
    """First sort key of the worklist: 1 for a critical study or one the site marked STAT,
    else 0. Only these jump the queue; the flag itself already follows P(abnormal), which
    orders the rest. A STAT study (priority 1.0) still goes before a critical one."""
    return 1 if tier == TIER_CRITICAL or (site_priority is not None and site_priority >= STAT) else 0


def critical_findings(probabilities: Mapping[str, float], critical: Mapping[str, float]) -> list[str]:
    """The critical findings at or above their critical thresholds, most probable first."""
    hits = [
        (name, float(probabilities[name]))
        for name, t in critical.items()
        if probabilities.get(name) is not None and float(probabilities[name]) >= float(t)
    ]
    hits.sort(key=lambda item: (-item[1], item[0]))
    return [name for name, _ in hits]


def study_tier(flagged: bool | None, critical_hits: list[str]) -> str:
    if critical_hits:
        return TIER_CRITICAL
    return TIER_FLAGGED if flagged else TIER_ROUTINE


def flag_reason(
    probabilities: Mapping[str, float],
    thresholds: Mapping[str, float],
    abnormal: float | None,
    flag_at: float | None,
    flagged: bool | None,
    critical: Mapping[str, float] | None = None,
) -> str:
    """The reason shown next to a flag (``""`` for a routine study).

    Critical findings come first, with their critical threshold; then every finding at or
    above its threshold (most probable first); when none is, the study threshold sentence.
    """
    critical = dict(critical or {})
    hits = critical_findings(probabilities, critical)
    if not flagged and not hits:
        return ""
    parts = [f"CRITICAL {name} {probabilities[name]:.2f} >= {critical[name]:.2f}" for name in hits]
    above = [
        (name, float(p))
        for name, p in probabilities.items()
        if name in thresholds and p is not None and name not in hits and float(p) >= thresholds[name]
    ]
    above.sort(key=lambda item: (-item[1], item[0]))
    parts += [f"{name} {p:.2f} >= {thresholds[name]:.2f}" for name, p in above]
    if parts:
        return "; ".join(parts)
    if abnormal is not None and flag_at is not None:
        return (
            f"abnormal, no single finding above its threshold "
            f"(P(abnormal) {abnormal:.2f} >= study threshold {flag_at:.2f})"
        )
    return "abnormal, no single finding above its threshold"
