"""MURA (Rajpurkar et al. 2017): musculoskeletal radiographs labelled per study (normal/abnormal).

Two headerless CSVs: ``*_image_paths.csv`` (one image path per line) and
``*_labeled_studies.csv`` (study folder, 0/1). Paths look like
``MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png``. The label belongs to the
study, so every image of a study shares it, and evaluation aggregates per study.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.data.base import RadiographDataset, study_table
from xraytriage.errors import ConfigError, MissingFileError
from xraytriage.labels import ABNORMAL

_PARTS = re.compile(r"(?P<body_part>XR_[A-Z]+)/(?P<patient>patient\d+)/(?P<study>study\d+[^/]*)")
BODY_PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")


def _study_key(path: str) -> str:
    """``.../XR_WRIST/patient11185/study1_positive/image1.png`` -> ``XR_WRIST/patient11185/study1_positive``."""
    match = _PARTS.search(path.replace("\\", "/"))
    return match.group(0) if match else str(Path(path).parent)


def _read_headerless(path: Path, n_columns: int) -> pd.DataFrame:
    if not path.is_file():
        raise MissingFileError(path, "MURA CSV")
    table = pd.read_csv(path, header=None, dtype=str)
    if table.shape[1] < n_columns:
        raise ConfigError(f"{path}: expected {n_columns} column(s), found {table.shape[1]}")
    if str(table.iat[0, 0]).lower() in ("path", "image", "study"):  # tolerate a header line
        table = table.iloc[1:]
    return table.reset_index(drop=True)


def normalize_body_part(name: str) -> str:
    key = str(name).strip().upper()
    key = key if key.startswith("XR_") else f"XR_{key}"
    if key not in BODY_PARTS:
        raise ConfigError(f"unknown MURA body part {name!r}; choose from {', '.join(BODY_PARTS)}")
    return key


class MURADataset(RadiographDataset):
    """MURA images with their study label as ``Abnormal`` (1/0; NaN if the study is unlabelled).

    ``root`` holds ``MURA-v1.1/`` (pointing at ``MURA-v1.1`` itself works too); default: the
    folder of the image-paths CSV. ``body_parts`` keeps e.g. ``["XR_WRIST"]`` or ``"wrist"``.
    Table columns add ``body_part`` and ``study_label``; ``study_id`` is the study folder.
    """

    name = "mura"

    def __init__(
        self,
        image_paths_csv: str | Path,
        labeled_studies_csv: str | Path,
        root: str | Path | None = None,
        body_parts: str | Sequence[str] | None = None,
    ) -> None:
        image_paths_csv, labeled_studies_csv = Path(image_paths_csv), Path(labeled_studies_csv)
        images = _read_headerless(image_paths_csv, 1).iloc[:, 0].astype(str).str.strip()
        studies = _read_headerless(labeled_studies_csv, 2)
        study_label = {
            _study_key(str(p)): float(v)
            for p, v in zip(
                studies.iloc[:, 0], pd.to_numeric(studies.iloc[:, 1], errors="coerce"), strict=True
            )
        }
        rel = images.str.replace("\\", "/", regex=False)
        first = rel.iloc[0].split("/", 1)[0] if len(rel) else ""
        base = Path(root) if root is not None else image_paths_csv.parent
        base = base.parent if first and base.name == first else base
        base_text = str(base.resolve())

        parts = rel.str.extract(_PARTS)
        keys = rel.map(_study_key)
        table = pd.DataFrame(
            {
                "path": (base_text + "/" + rel).to_numpy(),
                "relative_path": rel.to_numpy(),
                "patient_id": parts["patient"].fillna("").to_numpy(),
                "study_id": keys.to_numpy(),
                "view": "",
                "body_part": parts["body_part"].fillna("").to_numpy(),
                "study_label": keys.map(study_label).to_numpy(dtype=np.float32),
            }
        )
        if body_parts is not None:
            wanted = {
                normalize_body_part(b) for b in ([body_parts] if isinstance(body_parts, str) else body_parts)
            }
            table = table[table["body_part"].isin(wanted)]
        self.unlabelled_images = int(table["study_label"].isna().sum())
        self.studies_without_images = len(set(study_label) - set(keys))
        self.source = str(image_paths_csv)
        super().__init__(table, table["study_label"].to_numpy()[:, None], [ABNORMAL])

    def study_codes(self) -> np.ndarray:
        """Integer study number per image (0..n_studies-1, in order of first appearance)."""
        codes, _ = pd.factorize(self.table["study_id"])
        return codes

    def studies(self) -> pd.DataFrame:
        """One row per study: ``study_id, patient_id, body_part, label, n_images, indices``
        (``indices`` = this dataset's image rows of the study)."""
        return study_table(self.table.reset_index(), "study_label", "first")

    def study_scores(self, image_scores: np.ndarray, reduce: str = "mean") -> pd.DataFrame:
        """Aggregate per-image scores to per-study scores (``mean`` like the MURA paper, or ``max``)."""
        scores = np.asarray(image_scores, dtype=np.float64).reshape(len(self), -1)
        if reduce not in ("mean", "max"):
            raise ConfigError(f"reduce must be 'mean' or 'max', got {reduce!r}")
        frame = pd.DataFrame(scores, columns=[f"score_{j}" for j in range(scores.shape[1])])
        frame["study_id"] = self.table["study_id"].to_numpy()
        agg = frame.groupby("study_id", sort=False).agg(reduce)
        if scores.shape[1] == 1:
            agg = agg.rename(columns={"score_0": "score"})
        studies = self.studies().set_index("study_id")[["patient_id", "body_part", "label"]]
        return studies.join(agg).reset_index()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["body_parts"] = self.table["body_part"].value_counts().to_dict()
        info["unlabelled_images"] = self.unlabelled_images
        info["studies_without_images"] = self.studies_without_images
        return info
