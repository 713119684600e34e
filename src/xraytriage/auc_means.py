"""AUC means named by what they average, so a mean is never misread.

Papers on ChestX-ray14 report the mean AUC of the 14 findings. A model with "No Finding" and
"Abnormal" outputs as well has 16 AUCs, and their mean reads about 0.02 higher; calling both
"mean AUC" invites comparing the wrong numbers. Every mean therefore carries its definition in
its name, by one rule (used by training, cross-validation, evaluation and comparison):

- the **primary mean** averages the *findings* (labels other than No Finding, Abnormal and
  Support Devices): ``mean_auc_14_findings`` when they are exactly the 14 NIH findings, else
  ``mean_auc_<n>_findings`` (CheXpert's 14 observations hold 12 findings); a single finding or a
  single label is named after it (``auc_pneumonia``, ``auc_abnormal``);
- ``mean_auc_all_outputs`` averages every output of the model (the old "mean_auc"); in an
  evaluation that scores only some outputs (cross-dataset) it is ``mean_auc_<n>_labels``;
- ``auc_abnormal`` and ``auc_no_finding`` are those outputs on their own.

Labels whose AUC is undefined (one class only) are left out of a mean; reports then say how
many of the named labels had an AUC. Files written before this rule say ``mean_auc``: that was
the mean of every output, and it is read as ``mean_auc_all_outputs``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from xraytriage.labels import ABNORMAL, NIH_FINDINGS, NO_FINDING, NOT_DISEASE, canonical_label

log = logging.getLogger(__name__)

MEAN_14_FINDINGS = "mean_auc_14_findings"
ALL_OUTPUTS = "mean_auc_all_outputs"
LEGACY_MEAN = "mean_auc"
"""What files written before the naming rule call the mean of every output."""
DEFAULT_MONITOR = MEAN_14_FINDINGS


def single_auc_name(label: str) -> str:
    """``"Abnormal"`` -> ``"auc_abnormal"``, ``"No Finding"`` -> ``"auc_no_finding"``."""
    slug = "".join(c if c.isalnum() else "_" for c in canonical_label(label).lower())
    return "auc_" + "_".join(part for part in slug.split("_") if part)


def findings(labels: Sequence[str]) -> list[str]:
    """The labels that are findings (not No Finding, Abnormal or Support Devices)."""
    return [n for n in labels if canonical_label(n) not in NOT_DISEASE]


def primary_mean_name(labels: Sequence[str]) -> str:
    """The name of the mean reported first for this label set (see the module rule)."""
    found = findings(labels)
    if {canonical_label(n) for n in found} == set(NIH_FINDINGS) and len(found) == len(NIH_FINDINGS):
        return MEAN_14_FINDINGS
    if len(found) == 1:
        return single_auc_name(found[0])
    if found:
        return f"mean_auc_{len(found)}_findings"
    if len(labels) == 1:
        return single_auc_name(labels[0])
    return f"mean_auc_{len(labels)}_labels"


def mean_definitions(labels: Sequence[str], outputs: Sequence[str] | None = None) -> dict[str, list[str]]:
    """``{mean name: the labels it averages}``, primary first. ``outputs``: the model's outputs,
    when only some of them are scored (then the all-labels mean is ``mean_auc_<n>_labels``)."""
    labels = list(labels)
    primary = primary_mean_name(labels)
    found = findings(labels)
    out = {primary: found or labels}
    if set(out[primary]) != set(labels):
        every_output = outputs is None or {canonical_label(n) for n in outputs} == {
            canonical_label(n) for n in labels
        }
        out[ALL_OUTPUTS if every_output else f"mean_auc_{len(labels)}_labels"] = labels
    for special in (ABNORMAL, NO_FINDING):
        match = [n for n in labels if canonical_label(n) == special]
        if match and single_auc_name(special) not in out:
            out[single_auc_name(special)] = match
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else math.nan


def auc_means(aucs: Mapping[str, float], outputs: Sequence[str] | None = None) -> dict[str, float]:
    """``{mean name: value}`` from per-label AUCs (NaN / None = undefined, left out)."""
    return {
        name: _nanmean([aucs[n] for n in members])
        for name, members in mean_definitions(list(aucs), outputs).items()
    }


def training_means(aucs: Mapping[str, float]) -> dict[str, float]:
    """The means a training run records per epoch: the ``mean_auc_*`` ones (single-label AUCs
    are already there as ``auc/<label>``)."""
    return {k: v for k, v in auc_means(aucs).items() if k.startswith("mean_auc_")}


def training_mean_names(labels: Sequence[str]) -> list[str]:
    """Column names of :func:`training_means` for this label set (metrics.csv header)."""
    return [k for k in mean_definitions(labels) if k.startswith("mean_auc_")]


def resolve_monitor(metric: str, labels: Sequence[str]) -> str:
    """The training-metrics key that ``early_stopping.metric`` means for this label set.

    ``mean_auc`` (configs written before the rule) and the default ``mean_auc_14_findings`` on a
    model without the 14 NIH findings both mean the primary mean; a primary "mean" of a single
    label is that label's ``auc/<label>``."""
    primary = primary_mean_name(labels)
    if metric in (LEGACY_MEAN, MEAN_14_FINDINGS) and metric != primary:
        if metric == MEAN_14_FINDINGS:
            log.info("early stopping on %s: these labels are not the 14 NIH findings", primary)
        metric = primary
    if metric.startswith("auc_") and metric not in training_mean_names(labels):
        match = [n for n in labels if single_auc_name(n) == metric]
        if match:
            return f"auc/{match[0]}"
    return metric


def read_mean(row: Mapping[str, float], name: str) -> float:
    """A named mean from a metrics mapping, reading files written before the naming rule
    (their ``mean_auc`` was the mean of every output)."""
    if name in row and row[name] is not None:
        return float(row[name])
    if name == ALL_OUTPUTS and row.get(LEGACY_MEAN) is not None:
        return float(row[LEGACY_MEAN])
    return math.nan
