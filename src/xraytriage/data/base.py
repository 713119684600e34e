"""The dataset contract shared by every source (NIH, CheXpert, MURA, folder/CSV).

Like torchxrayvision: one class per source, same shape, harmonised label names, patient ids
kept, NaN for unknown labels. Unlike it: metadata lives in one pandas table and labels in one
float32 matrix, so splitting, filtering and mapping are plain array operations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.errors import ConfigError
from xraytriage.io import Radiograph, read_radiograph
from xraytriage.labels import ABNORMAL, abnormal_target, canonical_label, map_labels

REQUIRED_COLUMNS = ("path", "patient_id", "study_id", "view")


def single_class_warnings(collections: dict[str, dict[str, Any]]) -> list[str]:
    """One line per collection that holds only abnormal or only normal images: inside it the
    triage score cannot be evaluated, and pooled with others it teaches the collection."""
    lines = []
    for name, c in collections.items():
        known = c["abnormal"] + c["normal"]
        if len(collections) > 1 and known and (c["abnormal"] == 0 or c["normal"] == 0):
            only = "abnormal" if c["normal"] == 0 else "normal"
            lines.append(
                f"collection {name!r} holds only {only} images ({known}): a model can learn to "
                "recognise it instead of disease; evaluate within collections (--group-by collection) "
                "and balance them in training (sampler: group_balanced)"
            )
    return lines


def study_table(images: pd.DataFrame, label: str, how: str) -> pd.DataFrame:
    """One row per study of ``images`` (columns ``index, study_id, patient_id, body_part`` and
    ``label``): ``study_id, patient_id, body_part, label, n_images, indices``, the study's label
    being its images' ``label`` reduced by ``how`` (``first``: a study-level label; ``max``: any
    positive image)."""
    grouped = images.groupby("study_id", sort=False)
    out = grouped.agg(
        patient_id=("patient_id", "first"),
        body_part=("body_part", "first"),
        label=(label, how),
        n_images=("index", "size"),
        indices=("index", lambda s: np.asarray(s, dtype=np.int64)),
    )
    return out.reset_index()


class RadiographDataset:
    """Rows of ``table`` (columns ``path, patient_id, study_id, view, collection`` + source
    metadata; ``collection`` says which public collection or folder an image came from, since
    collections differ in selection and acquisition and a model can learn them) with
    a label matrix ``labels`` (N x len(label_names); 1, 0, NaN = unknown/ignored).

    ``path`` is absolute. Subclasses only parse their source files in ``__init__``.
    """

    name = "radiographs"

    def __init__(self, table: pd.DataFrame, labels: np.ndarray, label_names: Sequence[str]) -> None:
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise ConfigError(f"{self.name}: table lacks column(s) {', '.join(missing)}")
        labels = np.asarray(labels, dtype=np.float32).reshape(len(table), len(label_names))
        self.table = table.reset_index(drop=True)
        if "collection" not in self.table.columns:
            # One source, one collection, unless the subclass knows better (NIH folders).
            self.table["collection"] = self.name
        self.labels = labels
        self.label_names = [canonical_label(n) for n in label_names]

    # --- basics --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {self.table['patient_id'].nunique()} patients, "
            f"labels={self.label_names})"
        )

    @property
    def paths(self) -> list[str]:
        return self.table["path"].tolist()

    @property
    def patient_ids(self) -> np.ndarray:
        return self.table["patient_id"].astype(str).to_numpy()

    def read(self, index: int) -> Radiograph:
        return read_radiograph(self.table.at[index, "path"])

    # --- derived datasets ----------------------------------------------------------------
    def _derive(
        self, table: pd.DataFrame, labels: np.ndarray, label_names: Sequence[str]
    ) -> RadiographDataset:
        clone = object.__new__(type(self))
        RadiographDataset.__init__(clone, table, labels, label_names)
        for key, value in self.__dict__.items():
            if key not in ("table", "labels", "label_names"):
                clone.__dict__[key] = value
        boxes = getattr(self, "boxes", None)
        if isinstance(boxes, pd.DataFrame) and "path" in boxes:  # a derived dataset keeps its own boxes
            clone.boxes = boxes[boxes["path"].isin(set(clone.table["path"]))].reset_index(drop=True)
        return clone

    def subset(self, indices: Sequence[int] | np.ndarray) -> RadiographDataset:
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False)  # an empty list is float64 to numpy
        return self._derive(self.table.iloc[idx], self.labels[idx], self.label_names)

    def select_labels(self, names: Sequence[str]) -> RadiographDataset:
        """Re-index labels to ``names``; raises ConfigError for a name this dataset lacks."""
        names = [canonical_label(n) for n in names]
        unknown = [n for n in names if n not in self.label_names and n != ABNORMAL]
        if unknown:
            raise ConfigError(f"{self.name}: label(s) {unknown} not in dataset labels {self.label_names}")
        base = self.with_abnormal() if ABNORMAL in names and ABNORMAL not in self.label_names else self
        return self._derive(base.table, map_labels(base.labels, base.label_names, names), names)

    def with_abnormal(self) -> RadiographDataset:
        """Add the derived binary "Abnormal" label (any finding vs No Finding)."""
        if ABNORMAL in self.label_names:
            return self
        extra = abnormal_target(self.labels, self.label_names)[:, None]
        return self._derive(self.table, np.hstack([self.labels, extra]), [*self.label_names, ABNORMAL])

    # --- identity ------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """Stable hash of file names, patients and labels: stored in checkpoints."""
        h = hashlib.sha1()
        for name in self.table["path"].map(lambda p: Path(p).name):
            h.update(name.encode())
        h.update("|".join(self.label_names).encode())
        h.update(np.nan_to_num(self.labels, nan=-9).astype(np.int8).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Counts for ``datasets inspect``: per label (pos/neg/unknown), per view, patients."""
        per_label = {}
        for j, name in enumerate(self.label_names):
            col = self.labels[:, j]
            per_label[name] = {
                "positive": int((col == 1).sum()),
                "negative": int((col == 0).sum()),
                "unknown": int(np.isnan(col).sum()),
                "other": int(((col != 0) & (col != 1) & ~np.isnan(col)).sum()),
            }
        collections = self.describe_collections()
        return {
            "dataset": self.name,
            "images": len(self),
            "patients": int(self.table["patient_id"].nunique()),
            "studies": int(self.table["study_id"].nunique()),
            "views": self.table["view"].fillna("").replace("", "unknown").value_counts().to_dict(),
            "labels": per_label,
            "collections": collections,
            "warnings": single_class_warnings(collections),
        }

    def describe_collections(self) -> dict[str, dict[str, Any]]:
        """Per collection: images, patients, normal/abnormal/unknown counts, positives per label."""
        abnormal = abnormal_target(self.labels, self.label_names)
        out: dict[str, dict[str, Any]] = {}
        collection = self.table["collection"].astype(str).to_numpy()
        for name in sorted(set(collection.tolist())):
            mask = collection == name
            out[name] = {
                "images": int(mask.sum()),
                "patients": int(self.table.loc[mask, "patient_id"].nunique()),
                "abnormal": int((abnormal[mask] == 1).sum()),
                "normal": int((abnormal[mask] == 0).sum()),
                "unknown": int(np.isnan(abnormal[mask]).sum()),
                "positives": {
                    n: int((self.labels[mask, j] == 1).sum()) for j, n in enumerate(self.label_names)
                },
            }
        return out
