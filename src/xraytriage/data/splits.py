"""Patient-grouped splits: train/val/test fractions and k-fold, deterministic from a seed.

All images of a patient land in one split (a patient in two splits leaks identity and anatomy
into evaluation). Within that constraint splits are stratified greedily, like iterative
stratification: patients are placed, largest first, into the split whose share of the
patient's stratification keys (and of images overall) is furthest below its target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError, PatientLeakError
from xraytriage.labels import abnormal_target

StratifyMode = Literal["rarest", "abnormal", "none"]


def stratification_key(
    labels: np.ndarray, label_names: Sequence[str], mode: StratifyMode | str = "rarest"
) -> np.ndarray:
    """One integer key per image to stratify on.

    ``rarest``: the image's rarest positive label (by prevalence in ``labels``), or a separate
    key for images with no positive label; keeps rare findings spread over every split.
    ``abnormal``: any finding / No Finding / unknown. ``none``: a single key.
    """
    labels = np.asarray(labels, dtype=np.float32)
    n = labels.shape[0]
    if mode == "none":
        return np.zeros(n, dtype=np.int64)
    if mode == "abnormal":
        target = abnormal_target(labels, label_names)
        return np.where(np.isnan(target), 2, target).astype(np.int64)
    if mode != "rarest":
        raise ConfigError(f"stratify must be 'rarest', 'abnormal' or 'none', got {mode!r}")
    positive = labels == 1
    counts = positive.sum(axis=0)
    # rank labels from rarest to most common (labels never positive rank last)
    rarity = np.where(counts > 0, counts, np.iinfo(np.int64).max)
    order = np.argsort(rarity, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    ranked = np.where(positive, rank[None, :], len(order))
    return ranked.min(axis=1).astype(np.int64) if labels.shape[1] else np.zeros(n, dtype=np.int64)


def group_split(
    patient_ids: Sequence[str] | np.ndarray,
    keys: np.ndarray,
    fractions: Sequence[float],
    seed: int = 0,
) -> np.ndarray:
    """Split number (0..len(fractions)-1) per image; every patient in exactly one split."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if (fractions < 0).any() or fractions.sum() <= 0:
        raise ConfigError(f"split fractions must be >= 0 and not all 0, got {fractions.tolist()}")
    fractions = fractions / fractions.sum()
    patients = pd.Series(np.asarray(patient_ids).astype(str))
    group, _ = pd.factorize(patients)
    keys_code, _ = pd.factorize(pd.Series(np.asarray(keys)))
    n_groups, n_keys, n_splits = (
        int(group.max()) + 1 if len(group) else 0,
        int(keys_code.max()) + 1 if len(keys_code) else 0,
        len(fractions),
    )
    counts = np.zeros((n_groups, n_keys), dtype=np.float64)
    np.add.at(counts, (group, keys_code), 1.0)
    sizes = counts.sum(axis=1)

    target_keys = fractions[:, None] * counts.sum(axis=0)[None, :]
    target_images = fractions * len(group)
    have_keys = np.zeros((n_splits, n_keys))
    have_images = np.zeros(n_splits)
    allowed = fractions > 0

    rng = np.random.default_rng(seed)
    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]
    assignment = np.empty(n_groups, dtype=np.int64)
    for g in order:
        share = counts[g] / sizes[g]
        key_deficit = ((target_keys - have_keys) / np.maximum(target_keys, 1e-9)) @ share
        image_deficit = (target_images - have_images) / np.maximum(target_images, 1e-9)
        score = np.where(allowed, key_deficit + image_deficit, -np.inf)
        best = np.flatnonzero(score == score.max())
        s = int(best[0]) if len(best) == 1 else int(rng.choice(best))
        assignment[g] = s
        have_keys[s] += counts[g]
        have_images[s] += sizes[g]
    return assignment[group]


def _keys_for(dataset: RadiographDataset, stratify: StratifyMode | str) -> np.ndarray:
    return stratification_key(dataset.labels, dataset.label_names, stratify)


def train_val_test_split(
    dataset: RadiographDataset,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    stratify: StratifyMode | str = "rarest",
) -> dict[str, np.ndarray]:
    """Image indices per split (``train``, and ``val``/``test`` when their fraction is > 0)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"val and test fractions must be in [0, 1) with val + test < 1, got {val}, {test}")
    names = ["train", "val", "test"]
    assigned = group_split(
        dataset.patient_ids, _keys_for(dataset, stratify), [1 - val - test, val, test], seed
    )
    return {
        name: np.flatnonzero(assigned == s)
        for s, name in enumerate(names)
        if s == 0 or (val, test)[s - 1] > 0
    }


def patient_kfold(
    dataset: RadiographDataset, n_splits: int = 5, seed: int = 0, stratify: StratifyMode | str = "rarest"
) -> np.ndarray:
    """Fold number (0..n_splits-1) per image, patient-grouped and stratified."""
    n_patients = len(set(dataset.patient_ids))
    if not 2 <= n_splits <= max(2, n_patients):
        raise ConfigError(f"n_splits must be in 2..{n_patients} (number of patients), got {n_splits}")
    return group_split(dataset.patient_ids, _keys_for(dataset, stratify), [1.0] * n_splits, seed)


def kfold_indices(
    dataset: RadiographDataset, n_splits: int = 5, seed: int = 0, stratify: StratifyMode | str = "rarest"
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_indices, val_indices), ...]``, one pair per fold."""
    folds = patient_kfold(dataset, n_splits, seed, stratify)
    return [(np.flatnonzero(folds != k), np.flatnonzero(folds == k)) for k in range(n_splits)]


def split_dataset(dataset: RadiographDataset, **options) -> dict[str, RadiographDataset]:
    """:func:`train_val_test_split` returning datasets instead of indices."""
    return {name: dataset.subset(idx) for name, idx in train_val_test_split(dataset, **options).items()}


def assert_patient_disjoint(
    splits: Mapping[str, np.ndarray | Sequence[int] | RadiographDataset] | np.ndarray,
    patient_ids: Sequence[str] | np.ndarray | None = None,
) -> None:
    """Raise :class:`PatientLeakError` if any patient appears in more than one split.

    ``splits``: ``{name: indices}`` (with ``patient_ids`` of the whole dataset), ``{name:
    dataset}``, or an array of split/fold numbers per image (with ``patient_ids``).
    """
    if isinstance(splits, Mapping):
        owner: dict[str, str] = {}
        leaks: dict[str, set[str]] = {}
        for name, part in splits.items():
            if isinstance(part, RadiographDataset):
                ids = set(part.patient_ids)
            else:
                if patient_ids is None:
                    raise ConfigError("assert_patient_disjoint: patient_ids are needed with index splits")
                ids = set(np.asarray(patient_ids).astype(str)[np.asarray(part, dtype=np.int64)])
            for pid in ids:
                if pid in owner and owner[pid] != name:
                    leaks.setdefault(pid, {owner[pid]}).add(str(name))
                else:
                    owner[pid] = str(name)
    else:
        if patient_ids is None:
            raise ConfigError("assert_patient_disjoint: patient_ids are needed with a split array")
        frame = pd.DataFrame({"patient": np.asarray(patient_ids).astype(str), "split": np.asarray(splits)})
        per_patient = frame.groupby("patient")["split"].unique()
        leaks = {pid: {str(s) for s in v} for pid, v in per_patient.items() if len(v) > 1}
    if leaks:
        examples = "; ".join(f"{pid} in {sorted(names)}" for pid, names in list(leaks.items())[:5])
        raise PatientLeakError(f"{len(leaks)} patient(s) appear in more than one split: {examples}")
