"""NIH ChestX-ray14 (Wang et al., CVPR 2017): Data_Entry_2017 labels, BBox_List_2017 boxes.

The image folder often holds only a subset of the 112,120 listed images (or several folders at
different resolutions), so the dataset keeps the listed images it finds, counts those it does
not, and scales the boxes (given in the 1024x1024 pixel space) to each file's real size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError, MissingFileError
from xraytriage.labels import NIH_FINDINGS, NO_FINDING, canonical_label

log = logging.getLogger(__name__)

NIH_LABELS: tuple[str, ...] = (*NIH_FINDINGS, NO_FINDING)
NIH_BOX_SPACE = 1024
"""BBox_List_2017 coordinates are pixels of the 1024x1024 images NIH publishes."""

DATA_ENTRY_NAMES = (
    "Data_Entry_2017_v2020.csv.gz",
    "Data_Entry_2017_v2020.csv",
    "Data_Entry_2017.csv.gz",
    "Data_Entry_2017.csv",
)
BBOX_NAMES = ("BBox_List_2017.csv.gz", "BBox_List_2017.csv")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
BOX_COLLECTION_SUFFIX = "+box"
"""Appended to the collection of images that have a BBox_List box (abnormal by selection)."""

PathLike = str | Path


def find_meta_file(meta_dir: PathLike, candidates: Sequence[str]) -> Path | None:
    """First of ``candidates`` present in ``meta_dir`` (the NIH files keep their release names)."""
    for name in candidates:
        path = Path(meta_dir) / name
        if path.is_file():
            return path
    return None


def _as_list(value: PathLike | Sequence[PathLike]) -> list[Path]:
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value]


def _as_names(value: str | Sequence[str]) -> list[str]:
    """A YAML/CLI-friendly list: ``"PA,AP"``, ``"PA"`` or ``["PA", "AP"]``."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def index_image_folders(folders: Sequence[PathLike]) -> tuple[dict[str, str], dict[str, str], int]:
    """File name -> absolute path over several folders (first folder wins), file name -> the
    name of the folder it was found in (its collection), and the number of names found in more
    than one folder."""
    found: dict[str, str] = {}
    collection: dict[str, str] = {}
    duplicates = 0
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingFileError(folder, "NIH image folder")
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                if Path(name).suffix.lower() not in IMAGE_SUFFIXES or name.startswith("."):
                    continue
                if name in found:
                    duplicates += 1
                    continue
                found[name] = str(Path(root, name).resolve())
                collection[name] = folder.resolve().name
    return found, collection, duplicates


def read_split_file(path: PathLike) -> list[str]:
    """Image names, one per line (NIH ``train_val_list.txt`` / ``test_list.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "split file")
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [Path(n).name for n in names if n and not n.startswith("#")]
    if not names:
        raise ConfigError(f"{path}: split file lists no image names")
    return names


def read_data_entry(path: PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "NIH Data_Entry CSV")
    table = pd.read_csv(path)
    needed = ("Image Index", "Finding Labels", "Patient ID", "View Position")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ConfigError(
            f"{path}: not a NIH Data_Entry file, column(s) {missing} missing (a label CSV of your own "
            "is the csv dataset kind: --dataset csv --csv FILE)"
        )
    return table


def read_bbox_list(path: PathLike) -> pd.DataFrame:
    """BBox_List_2017 as ``image_index, finding, x, y, w, h`` (1024 px space, canonical names).

    The release header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``: the four numbers sit
    in the third to sixth columns whatever their header says.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "NIH BBox_List CSV")
    raw = pd.read_csv(path)
    if raw.shape[1] < 6:
        raise ConfigError(f"{path}: expected 6 columns (image, finding, x, y, w, h), found {raw.shape[1]}")
    boxes = raw.iloc[:, :6].copy()
    boxes.columns = ["image_index", "finding", "x", "y", "w", "h"]
    boxes["finding"] = boxes["finding"].astype(str).map(canonical_label)
    for col in ("x", "y", "w", "h"):
        boxes[col] = pd.to_numeric(boxes[col], errors="coerce")
    return boxes.dropna(subset=["x", "y", "w", "h"]).reset_index(drop=True)


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) from the file header only; no pixel decoding."""
    with Image.open(path) as img:
        return img.size


class NIHChestXray14Dataset(RadiographDataset):
    """NIH ChestX-ray14 images found in ``images_dirs``, labelled from ``data_entry_csv``.

    - Labels: the 14 findings + "No Finding" (canonical names: "Pleural Thickening"); NIH
      labels are complete, so there are no NaN.
    - ``views``: keep these view positions (default PA and AP, i.e. all); ``None`` keeps all.
    - ``split_file``: one path or several (the official ``train_val_list.txt``/``test_list.txt``)
      restricting the dataset to the listed names; or a mapping ``{split name: path}`` that also
      fills a ``split`` column.
    - ``missing``: how many listed images (after the split restriction) are not in the folders;
      ``missing_names`` lists them.
    - ``boxes``: ``path, image_index, finding, x, y, w, h`` scaled to each image's real size.
    """

    name = "nih"

    def __init__(
        self,
        images_dirs: PathLike | Sequence[PathLike],
        data_entry_csv: PathLike,
        bbox_csv: PathLike | None = None,
        views: Sequence[str] | None = ("PA", "AP"),
        split_file: PathLike | Sequence[PathLike] | Mapping[str, PathLike] | None = None,
    ) -> None:
        folders = _as_list(images_dirs)
        if not folders:
            raise ConfigError("nih: at least one image folder is required")
        entries = read_data_entry(data_entry_csv)
        entries["Image Index"] = entries["Image Index"].astype(str)
        entries, split_names = self._restrict_to_split(entries, split_file)
        self.listed = len(entries)

        found, collection_of, self.duplicate_files = index_image_folders(folders)
        present = entries["Image Index"].isin(found)
        self.missing_names = entries.loc[~present, "Image Index"].tolist()
        self.missing = len(self.missing_names)
        entries = entries[present].copy()

        entries["View Position"] = entries["View Position"].fillna("").astype(str).str.upper()
        before_views = len(entries)
        self.views = None if views is None else sorted({str(v).upper() for v in _as_names(views)})
        if self.views is not None:
            entries = entries[entries["View Position"].isin(self.views)]
        self.excluded_by_view = before_views - len(entries)

        table = self._table(entries, found, split_names)
        table["collection"] = entries["Image Index"].map(collection_of).to_numpy()
        labels = self._label_matrix(entries["Finding Labels"])
        self.images_dirs = [str(f) for f in folders]
        self.source = str(data_entry_csv)
        super().__init__(table, labels, NIH_LABELS)
        self.boxes = self._boxes(bbox_csv) if bbox_csv is not None else self._empty_boxes()
        self._mark_box_collection()
        if self.missing:
            log.debug(
                "nih: %d of %d listed images not found in %s", self.missing, self.listed, self.images_dirs
            )

    # --- construction helpers ------------------------------------------------------------
    @staticmethod
    def _restrict_to_split(entries: pd.DataFrame, split_file) -> tuple[pd.DataFrame, dict[str, str] | None]:
        if split_file is None:
            return entries, None
        if isinstance(split_file, Mapping):
            split_of: dict[str, str] = {}
            for split, path in split_file.items():
                for name in read_split_file(path):
                    split_of.setdefault(name, str(split))
        else:
            split_of = {name: "" for path in _as_list(split_file) for name in read_split_file(path)}
        keep = entries["Image Index"].isin(split_of)
        return entries[keep].copy(), split_of if isinstance(split_file, Mapping) else None

    @staticmethod
    def _table(entries: pd.DataFrame, found: dict[str, str], split_of: dict[str, str] | None) -> pd.DataFrame:
        names = entries["Image Index"]
        patient = pd.to_numeric(entries["Patient ID"], errors="coerce")
        table = pd.DataFrame(
            {
                "path": names.map(found).to_numpy(),
                "image_index": names.to_numpy(),
                "patient_id": [f"{int(p):08d}" if p == p else "" for p in patient],
                "study_id": names.map(lambda n: Path(n).stem).to_numpy(),
                "view": entries["View Position"].to_numpy(),
                "follow_up": pd.to_numeric(entries.get("Follow-up #"), errors="coerce").to_numpy()
                if "Follow-up #" in entries
                else np.nan,
                "age": pd.to_numeric(entries.get("Patient Age"), errors="coerce").to_numpy()
                if "Patient Age" in entries
                else np.nan,
                "sex": entries["Patient Gender"].fillna("").astype(str).to_numpy()
                if "Patient Gender" in entries
                else "",
                "finding_labels": entries["Finding Labels"].fillna("").astype(str).to_numpy(),
            }
        )
        if split_of is not None:
            table["split"] = names.map(split_of).to_numpy()
        return table

    @staticmethod
    def _label_matrix(finding_labels: pd.Series) -> np.ndarray:
        column = {name: j for j, name in enumerate(NIH_LABELS)}
        labels = np.zeros((len(finding_labels), len(NIH_LABELS)), dtype=np.float32)
        unknown: set[str] = set()
        for i, text in enumerate(finding_labels.fillna("").astype(str)):
            for raw in text.split("|"):
                if not raw.strip():
                    continue
                name = canonical_label(raw)
                if name in column:
                    labels[i, column[name]] = 1.0
                else:
                    unknown.add(raw)
        if unknown:
            log.warning("nih: ignored unknown finding name(s) %s", sorted(unknown))
        return labels

    def _boxes(self, bbox_csv: PathLike) -> pd.DataFrame:
        boxes = read_bbox_list(bbox_csv)
        path_of = dict(zip(self.table["image_index"], self.table["path"], strict=True))
        boxes = boxes[boxes["image_index"].isin(path_of)].copy()
        if boxes.empty:
            return self._empty_boxes()
        boxes.insert(0, "path", boxes["image_index"].map(path_of))
        sizes = {path: image_size(path) for path in boxes["path"].unique()}
        sx = boxes["path"].map(lambda p: sizes[p][0] / NIH_BOX_SPACE)
        sy = boxes["path"].map(lambda p: sizes[p][1] / NIH_BOX_SPACE)
        boxes["x"], boxes["w"] = boxes["x"] * sx, boxes["w"] * sx
        boxes["y"], boxes["h"] = boxes["y"] * sy, boxes["h"] * sy
        boxes["image_width"] = boxes["path"].map(lambda p: sizes[p][0])
        boxes["image_height"] = boxes["path"].map(lambda p: sizes[p][1])
        return boxes.reset_index(drop=True)

    def _mark_box_collection(self) -> None:
        """Images listed in BBox_List were selected *because* they are abnormal: within their
        folder they form a collection of their own (``<folder>+box``), so grouped evaluation
        and balanced sampling never mix them with the folder's unselected images."""
        has_box = self.table["image_index"].isin(set(self.boxes["image_index"])).to_numpy()
        self.table["has_box"] = has_box
        self.table.loc[has_box, "collection"] = self.table.loc[has_box, "collection"] + BOX_COLLECTION_SUFFIX

    @staticmethod
    def _empty_boxes() -> pd.DataFrame:
        columns = ["path", "image_index", "finding", "x", "y", "w", "h", "image_width", "image_height"]
        return pd.DataFrame(columns=columns)

    def boxes_for(self, index: int) -> pd.DataFrame:
        """Boxes of image ``index`` (pixels of the file as stored)."""
        return self.boxes[self.boxes["path"] == self.table.at[index, "path"]].reset_index(drop=True)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            {
                "listed": self.listed,
                "missing_files": self.missing,
                "excluded_by_view": self.excluded_by_view,
                "boxes": len(self.boxes),
                "images_with_boxes": int(self.boxes["path"].nunique()) if len(self.boxes) else 0,
            }
        )
        return info
