"""Class folders: ``root/0_normal/*.png``, ``root/1_abnormal/**/*.dcm``, or any class names.

Two classes of which one reads as normal (normal, negative, healthy, no finding...) become the
binary label ``Abnormal`` (plus the finding itself when the other class names one, e.g.
``NORMAL``/``PNEUMONIA`` -> ``Abnormal`` and ``Pneumonia``, so a multi-label model is scored on
both); anything else becomes one one-hot column per class. A leading
``0_``/``1-`` ordering prefix is dropped from the class name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError, MissingFileError
from xraytriage.io import iter_input_files
from xraytriage.labels import ABNORMAL, NIH_FINDINGS, canonical_label

NORMAL_NAMES = {"normal", "negative", "healthy", "no finding", "nofinding", "benign", "0"}
_PREFIX = re.compile(r"^\d+[_\-. ]+")


def class_name(folder_name: str) -> str:
    """``"1_abnormal"`` -> ``"abnormal"``; ``"0"`` stays ``"0"``."""
    stripped = _PREFIX.sub("", folder_name)
    return stripped or folder_name


def _is_normal(name: str) -> bool:
    return name.strip().lower().replace("_", " ").replace("-", " ") in NORMAL_NAMES


class FolderDataset(RadiographDataset):
    """Images under ``root/<class>/`` (searched recursively), labelled by their class folder.

    ``patient_pattern``: a regular expression applied to the path relative to ``root``; its
    first group (or the whole match) is the patient id. Without it each image is its own
    patient, so splits cannot group images of one patient: say so when reporting.
    ``binary``: force (True) or forbid (False) the normal/abnormal reading; default: automatic.
    """

    name = "folder"

    def __init__(
        self, root: str | Path, patient_pattern: str | None = None, binary: bool | None = None
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MissingFileError(root, "image folder")
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise ConfigError(
                f"{root}: no class folders (expected e.g. {root}/0_normal and {root}/1_abnormal)"
            )
        names = [class_name(p.name) for p in class_dirs]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"{root}: class folders {[p.name for p in class_dirs]} give duplicate class names"
            )
        normal = [i for i, n in enumerate(names) if _is_normal(n)]
        auto_binary = len(names) == 2 and len(normal) == 1
        if binary and not auto_binary:
            raise ConfigError(
                f"{root}: binary=True needs two class folders, one of them normal-like; found {names}"
            )
        self.binary = auto_binary if binary is None else bool(binary)

        rows, classes = [], []
        for k, folder in enumerate(class_dirs):
            for path in iter_input_files([folder], recursive=True):
                rows.append(str(path.resolve()))
                classes.append(k)
        if not rows:
            raise ConfigError(f"{root}: class folders hold no image files")
        self.unassigned_files = sum(1 for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        classes_arr = np.asarray(classes)
        if self.binary:
            label_names = [ABNORMAL]
            labels = (classes_arr != normal[0]).astype(np.float32)[:, None]
            finding = canonical_label(names[1 - normal[0]])
            if finding in NIH_FINDINGS:  # e.g. NORMAL/PNEUMONIA: the abnormal class is a finding too
                label_names.append(finding)
                labels = np.hstack([labels, labels])
        else:
            label_names = [canonical_label(n) for n in names]
            labels = np.eye(len(names), dtype=np.float32)[classes_arr]
        rel = [str(Path(p).relative_to(root.resolve())) for p in rows]
        table = pd.DataFrame(
            {
                "path": rows,
                "relative_path": rel,
                "patient_id": self._patients(rel, patient_pattern),
                "study_id": [str(Path(r).with_suffix("")) for r in rel],
                "view": "",
                "class_folder": [class_dirs[k].name for k in classes],
            }
        )
        self.class_folders = [p.name for p in class_dirs]
        self.source = str(root)
        super().__init__(table, labels, label_names)

    @staticmethod
    def _patients(rel: list[str], pattern: str | None) -> list[str]:
        if pattern is None:
            return [str(Path(r).with_suffix("")) for r in rel]
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"patient_pattern {pattern!r} is not a valid regular expression: {exc}"
            ) from None
        out = []
        for r in rel:
            match = regex.search(r)
            if match is None:
                raise ConfigError(f"patient_pattern {pattern!r} does not match {r!r}")
            out.append(match.group(1) if match.groups() else match.group(0))
        return out

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["class_folders"] = self.class_folders
        info["binary"] = self.binary
        info["unassigned_files"] = self.unassigned_files
        return info
