"""Canonical finding names, per-dataset aliases, mappings between datasets, derived targets.

Canonical names follow NIH ChestX-ray14 spelling with spaces ("Pleural Thickening"), and the
CheXpert "Pleural Effusion" is harmonised to "Effusion" (same finding), as torchxrayvision does.
Label matrices everywhere are float32 with 1 = present, 0 = absent, NaN = unknown/ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NO_FINDING = "No Finding"
ABNORMAL = "Abnormal"

NIH_FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural Thickening",
    "Hernia",
)

NIH_BOX_FINDINGS: tuple[str, ...] = NIH_FINDINGS[:8]
"""ChestX-ray8's eight findings (NIH's first eight), the ones BBox_List_2017 has boxes for."""

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
CHEXPERT_COMPETITION: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion")

NOT_DISEASE = frozenset({NO_FINDING, ABNORMAL, "Support Devices"})
"""Labels that do not make a study abnormal on their own."""

ALIASES: dict[str, str] = {
    "infiltrate": "Infiltration",
    "infiltrates": "Infiltration",
    "pleural_thickening": "Pleural Thickening",
    "pleural thickening": "Pleural Thickening",
    "pleural effusion": "Effusion",
    "pleural_effusion": "Effusion",
    "effusion": "Effusion",
    "no finding": NO_FINDING,
    "no_finding": NO_FINDING,
    "normal": NO_FINDING,
    "abnormal": ABNORMAL,
    "enlarged_cardiomediastinum": "Enlarged Cardiomediastinum",
    "lung_opacity": "Lung Opacity",
    "lung_lesion": "Lung Lesion",
    "pleural_other": "Pleural Other",
    "support_devices": "Support Devices",
}

# CheXpert <-> NIH overlap (the labels both data sets annotate), for cross-dataset evaluation.
CHEXPERT_NIH_OVERLAP: tuple[str, ...] = (
    NO_FINDING,
    "Cardiomegaly",
    "Edema",
    "Consolidation",
    "Atelectasis",
    "Pneumothorax",
    "Effusion",
    "Pneumonia",
)


def canonical_label(name: str) -> str:
    """Harmonised spelling of a finding name ("Infiltrate" -> "Infiltration", "prob_Mass" -> "Mass")."""
    cleaned = name.strip()
    if cleaned.lower().startswith("prob_"):
        cleaned = cleaned[5:]
    key = cleaned.lower()
    if key in ALIASES:
        return ALIASES[key]
    for known in (*NIH_FINDINGS, *CHEXPERT_OBSERVATIONS):
        if key == known.lower() or key.replace("_", " ") == known.lower():
            return known
    return cleaned


def shared_labels(a: Sequence[str], b: Sequence[str]) -> list[str]:
    """Labels present in both lists (after harmonising), in the order of ``a``."""
    bset = {canonical_label(x) for x in b}
    return [canonical_label(x) for x in a if canonical_label(x) in bset]


def map_labels(labels: np.ndarray, from_names: Sequence[str], to_names: Sequence[str]) -> np.ndarray:
    """Re-index a label matrix to another label list; labels the source lacks become NaN."""
    labels = np.asarray(labels, dtype=np.float32)
    index = {canonical_label(n): i for i, n in enumerate(from_names)}
    out = np.full((labels.shape[0], len(to_names)), np.nan, dtype=np.float32)
    for j, name in enumerate(to_names):
        i = index.get(canonical_label(name))
        if i is not None:
            out[:, j] = labels[:, i]
    return out


def abnormal_target(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Binary "abnormal": 1 if any disease label is 1; 0 if No Finding is 1 or every disease
    label is 0; NaN when it cannot be known (only unknown/uncertain disease labels)."""
    labels = np.asarray(labels, dtype=np.float32)
    names = [canonical_label(n) for n in names]
    disease = [i for i, n in enumerate(names) if n not in NOT_DISEASE]
    d = labels[:, disease] if disease else np.zeros((labels.shape[0], 0), np.float32)
    out = np.full(labels.shape[0], np.nan, dtype=np.float32)
    all_zero = (d == 0).all(axis=1) if d.shape[1] else np.zeros(labels.shape[0], bool)
    out[all_zero] = 0.0
    if NO_FINDING in names:
        out[labels[:, names.index(NO_FINDING)] == 1] = 0.0
    if d.shape[1]:
        out[(d == 1).any(axis=1)] = 1.0
    return out
