"""Generic CSV dataset: one row per image, a path column and one column per label."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError, MissingFileError

_META = {"path", "patient_id", "study_id", "view"}


class CSVDataset(RadiographDataset):
    """Images listed in a CSV: ``path`` (relative to ``root``, default the CSV's folder),
    optional ``patient_id``, ``study_id``, ``view``, and label columns (1/0/blank).

    ``labels`` picks label columns; default: every numeric column that is not metadata.
    Without ``patient_id`` each image is its own patient (say so: splits cannot group then).
    """

    name = "csv"

    def __init__(
        self,
        csv_path: str | Path,
        root: str | Path | None = None,
        labels: Sequence[str] | None = None,
        path_column: str = "path",
    ) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise MissingFileError(csv_path, "label CSV")
        table = pd.read_csv(csv_path)
        if path_column not in table.columns:
            raise ConfigError(f"{csv_path}: no {path_column!r} column (columns: {', '.join(table.columns)})")
        table = table.rename(columns={path_column: "path"})
        root = Path(root) if root is not None else csv_path.parent
        table["path"] = [str((root / p).resolve()) for p in table["path"].astype(str)]
        if "patient_id" not in table.columns:
            table["patient_id"] = table["path"].map(lambda p: Path(p).stem)
        if "study_id" not in table.columns:
            table["study_id"] = table["path"].map(lambda p: Path(p).stem)
        if "view" not in table.columns:
            table["view"] = ""
        table["patient_id"] = table["patient_id"].astype(str)
        table["study_id"] = table["study_id"].astype(str)
        table["view"] = table["view"].fillna("").astype(str)
        if labels is None:
            labels = [c for c in table.columns if c not in _META and pd.api.types.is_numeric_dtype(table[c])]
        missing = [c for c in labels if c not in table.columns]
        if missing:
            raise ConfigError(f"{csv_path}: label column(s) {missing} not found")
        matrix = table[list(labels)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32)
        self.source = str(csv_path)
        super().__init__(table, matrix, list(labels))
