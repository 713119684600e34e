"""FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023): real musculoskeletal radiographs,
fractured or not, the open counterpart of MURA (whose terms forbid redistribution).

Layout (as in ``../shared/data/msk/fracatlas``): ``dataset.csv`` (FracAtlas's columns: the
body-part flags ``hand, leg, hip, shoulder, mixed``, ``hardware, multiscan, fractured,
fracture_count``, the view flags ``frontal, lateral, oblique``; plus ``folder``, ``group``, the
original ``width``/``height`` and ``resized``), ``images/<folder>/<image_id>`` and
``annotations_coco.json`` (fracture polygons and boxes in the pixels of the files as stored).

FracAtlas has no patient ids: ``group`` (a block of consecutive ids, which is where one
patient's images sit) is the patient key of every split. The two resolution kinds (originals
of about 373x454 px; 1760-2880 px originals reduced to 1024 px) differ in fracture share, so
each is a ``collection`` of its own and evaluation runs within them. A study is one image,
except runs of consecutive ``multiscan`` images of the same body part in one group, which
form one multi-image study (the nearest FracAtlas has to MURA's studies).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.data.base import RadiographDataset, study_table
from xraytriage.data.boxes import GroundTruth
from xraytriage.errors import ConfigError, ImageReadError, MissingFileError
from xraytriage.labels import ABNORMAL

FRACTURE = "Fracture"
FRACATLAS_LABELS = [FRACTURE, ABNORMAL]
BODY_PART_FLAGS = ("hand", "leg", "hip", "shoulder")
VIEW_FLAGS = ("frontal", "lateral", "oblique")
LARGE_SIDE = 1000  # originals with a longer side above this were the 1760-2880 px films
SMALL, LARGE = "fracatlas-small", "fracatlas-large"
REQUIRED = ("image_id", *BODY_PART_FLAGS, "hardware", "multiscan", "fractured", *VIEW_FLAGS, "group")


def _flags(frame: pd.DataFrame, names: Sequence[str]) -> list[str]:
    """``"hand+leg"`` per row: the names whose 0/1 column is 1 (``""`` when none)."""
    values = frame[list(names)].fillna(0).astype(int).to_numpy()
    return ["+".join(n for n, v in zip(names, row, strict=True) if v) for row in values]


def multiscan_studies(table: pd.DataFrame) -> list[str]:
    """Study id per row: the image's own id, or for a run of consecutive ``multiscan`` images
    of the same body part in the same group, the first image's id (one multi-image study)."""
    out: list[str] = []
    previous: tuple[str, str, int] | None = None
    current = ""
    for row in table[["image_id", "group", "body_part", "multiscan", "number"]].itertuples(index=False):
        key = (str(row.group), str(row.body_part), int(row.number))
        if (
            int(row.multiscan)
            and previous is not None
            and previous[:2] == key[:2]
            and key[2] - previous[2] == 1
        ):
            out.append(current)
        else:
            current = Path(str(row.image_id)).stem
            out.append(current)
        previous = key if int(row.multiscan) else None
    return out


class FracAtlasDataset(RadiographDataset):
    """FracAtlas images with labels ``Fracture`` and ``Abnormal`` (the same 0/1 here: the only
    abnormality FracAtlas records). Table columns add ``image_id, group, body_part, view,
    hardware, multiscan, fracture_count, width, height, resized, resolution`` and
    ``collection`` = the resolution kind (``fracatlas-small`` / ``fracatlas-large``);
    ``patient_id`` is the ``group``. ``boxes`` has one row per annotated fracture (pixels of
    the file as stored, with its polygon)."""

    name = "fracatlas"

    def __init__(
        self,
        root: str | Path,
        csv: str | Path | None = None,
        annotations: str | Path | None = None,
        body_parts: Sequence[str] | None = None,
        resolution: str | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(self.root, "FracAtlas root folder")
        csv_path = Path(csv) if csv is not None else self.root / "dataset.csv"
        if not csv_path.is_file():
            raise MissingFileError(csv_path, "FracAtlas dataset.csv")
        entries = pd.read_csv(csv_path)
        lacking = [c for c in REQUIRED if c not in entries.columns]
        if lacking:
            raise ConfigError(f"{csv_path}: lacks FracAtlas column(s) {', '.join(lacking)}")
        self.listed = len(entries)
        table = self._table(entries)
        present = table["path"].map(lambda p: Path(p).is_file()).to_numpy()
        self.missing_names = table.loc[~present, "image_id"].tolist()
        self.missing = len(self.missing_names)
        table = table[present]
        if body_parts is not None:
            wanted = {
                str(b).strip().lower() for b in ([body_parts] if isinstance(body_parts, str) else body_parts)
            }
            unknown = wanted - set(BODY_PART_FLAGS)
            if unknown:
                raise ConfigError(
                    f"unknown FracAtlas body part(s) {sorted(unknown)}; choose from {BODY_PART_FLAGS}"
                )
            table = table[table["body_part"].map(lambda b: bool(set(b.split("+")) & wanted))]
        if resolution is not None:
            if str(resolution) not in ("small", "large"):
                raise ConfigError(f"FracAtlas resolution must be 'small' or 'large', got {resolution!r}")
            table = table[table["resolution"] == resolution]
        fractured = table["fractured"].to_numpy(dtype=np.float32)
        self.source = str(csv_path)
        self.annotations_file = (
            Path(annotations) if annotations is not None else self.root / "annotations_coco.json"
        )
        super().__init__(
            table.drop(columns=["fractured"]), np.stack([fractured, fractured], axis=1), FRACATLAS_LABELS
        )
        self.boxes = (
            self._boxes(self.annotations_file) if self.annotations_file.is_file() else self._empty_boxes()
        )
        self._unreadable: dict[str, str] | None = None

    # --- construction --------------------------------------------------------------------
    def _table(self, entries: pd.DataFrame) -> pd.DataFrame:
        folder = entries["folder"].astype(str) if "folder" in entries else pd.Series("", index=entries.index)
        image_id = entries["image_id"].astype(str)
        width = pd.to_numeric(entries.get("width"), errors="coerce") if "width" in entries else np.nan
        height = pd.to_numeric(entries.get("height"), errors="coerce") if "height" in entries else np.nan
        table = pd.DataFrame(
            {
                "path": [
                    str((self.root / "images" / f / i).resolve())
                    for f, i in zip(folder, image_id, strict=True)
                ],
                "image_id": image_id.to_numpy(),
                "group": entries["group"].astype(str).to_numpy(),
                "body_part": _flags(entries, BODY_PART_FLAGS),
                "view": [v or "unknown" for v in _flags(entries, VIEW_FLAGS)],
                "hardware": entries["hardware"].fillna(0).astype(int).to_numpy(),
                "multiscan": entries["multiscan"].fillna(0).astype(int).to_numpy(),
                "fracture_count": pd.to_numeric(entries.get("fracture_count", 0), errors="coerce").to_numpy(),
                "fractured": pd.to_numeric(entries["fractured"], errors="coerce").to_numpy(),
                "width": np.asarray(width, dtype=np.float64) * np.ones(len(entries)),
                "height": np.asarray(height, dtype=np.float64) * np.ones(len(entries)),
                "resized": entries["resized"].astype(str).str.lower().eq("true").to_numpy()
                if "resized" in entries
                else False,
            }
        )
        table["patient_id"] = table["group"]
        table["number"] = pd.to_numeric(table["image_id"].str.extract(r"(\d+)")[0], errors="coerce").fillna(
            -1
        )
        table["study_id"] = multiscan_studies(table)
        longer = np.fmax(table["width"].to_numpy(), table["height"].to_numpy())
        table["resolution"] = np.where(longer > LARGE_SIDE, "large", "small")
        table["collection"] = np.where(longer > LARGE_SIDE, LARGE, SMALL)
        return table.drop(columns=["number"])

    def _boxes(self, path: Path) -> pd.DataFrame:
        try:
            coco = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the COCO annotations: {exc}") from None
        images = {int(im["id"]): im for im in coco.get("images", [])}
        path_of = dict(zip(self.table["image_id"], self.table["path"], strict=True))
        rows = []
        for ann in coco.get("annotations", []):
            image = images.get(int(ann.get("image_id", -1)))
            if image is None or image.get("file_name") not in path_of:
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            polygon = [float(v) for part in ann.get("segmentation") or [] for v in part]
            rows.append(
                {
                    "path": path_of[image["file_name"]],
                    "image_index": image["file_name"],
                    "finding": FRACTURE,
                    "x": x,
                    "y": y,
                    "w": w,
                    "h": h,
                    "image_width": int(image["width"]),
                    "image_height": int(image["height"]),
                    "polygon": polygon,
                }
            )
        return pd.DataFrame(rows) if rows else self._empty_boxes()

    @staticmethod
    def _empty_boxes() -> pd.DataFrame:
        columns = [
            "path",
            "image_index",
            "finding",
            "x",
            "y",
            "w",
            "h",
            "image_width",
            "image_height",
            "polygon",
        ]
        return pd.DataFrame(columns=columns)

    def _derive(self, table, labels, label_names):
        clone = super()._derive(table, labels, label_names)  # boxes: the base keeps the clone's own
        clone._unreadable = None
        return clone

    # --- queries -------------------------------------------------------------------------
    def boxes_for(self, index: int) -> pd.DataFrame:
        """Fracture boxes (and polygons) of image ``index``, in the pixels of the file."""
        return self.boxes[self.boxes["path"] == self.table.at[index, "path"]].reset_index(drop=True)

    def ground_truth(self) -> GroundTruth:
        """The fracture boxes keyed by file name, in the pixels of the files: what the localiser
        (``localiser pack --dataset fracatlas``) and the localisation benchmark read."""
        boxes = self.boxes.rename(columns={"image_index": "image"})[["image", "finding", "x", "y", "w", "h"]]
        return GroundTruth(boxes.reset_index(drop=True), None, str(self.annotations_file))

    def unreadable_files(self) -> dict[str, str]:
        """Every file the decoder refuses (FracAtlas ships truncated JPEGs), name -> problem.
        Decodes each image once (seconds for the whole set); the answer is kept."""
        if self._unreadable is None:
            from xraytriage.io import read_radiograph

            out: dict[str, str] = {}
            for path in self.table["path"]:
                try:
                    read_radiograph(path, max_side=64)
                except ImageReadError as exc:
                    out[Path(path).name] = str(getattr(exc, "problem", exc))
            self._unreadable = out
        return self._unreadable

    def studies(self) -> pd.DataFrame:
        """One row per study: ``study_id, patient_id, body_part, label, n_images, indices``
        (the shape of :meth:`MURADataset.studies`, so study-level evaluation reads both)."""
        frame = self.table.reset_index()[["index", "study_id", "patient_id", "body_part"]].copy()
        frame["label"] = self.labels[:, 0]
        return study_table(frame, "label", "max")

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["listed"] = self.listed
        info["missing_files"] = self.missing
        info["body_parts"] = self.table["body_part"].value_counts().to_dict()
        info["resolution_kinds"] = {
            kind: {
                "images": int((self.table["resolution"] == kind).sum()),
                "fractured": int(self.labels[(self.table["resolution"] == kind).to_numpy(), 0].sum()),
                "groups": int(self.table.loc[self.table["resolution"] == kind, "group"].nunique()),
            }
            for kind in ("small", "large")
        }
        info["hardware"] = int(self.table["hardware"].sum())
        info["multiscan_images"] = int(self.table["multiscan"].sum())
        info["multi_image_studies"] = int((self.table["study_id"].value_counts() > 1).sum())
        info["boxes"] = len(self.boxes)
        info["images_with_boxes"] = int(self.boxes["path"].nunique()) if len(self.boxes) else 0
        labelled = self.labels[:, 0] == 1
        with_box = self.table["path"].isin(set(self.boxes["path"])).to_numpy()
        info["box_label_disagreements"] = sorted(self.table.loc[with_box != labelled, "image_id"].tolist())
        return info
