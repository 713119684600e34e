"""Ground-truth boxes (NIH ``BBox_List_2017`` or a pixel-space CSV) and the images they are on:
what the localisation benchmark and the localiser's training both read."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from xraytriage.errors import ConfigError
from xraytriage.labels import canonical_label


@dataclass
class GroundTruth:
    """GT boxes keyed by image file name; ``reference_size`` (NIH: 1024) says the coordinates
    are in that pixel space and are scaled by (image width / reference, height / reference);
    None means they are already in the image's pixels."""

    boxes: pd.DataFrame  # image, finding, x, y, w, h
    reference_size: float | None = None
    source: str = ""


def load_ground_truth(path: str | Path) -> GroundTruth:
    """NIH ``BBox_List_2017.csv(.gz)`` (1024 px space) or a pixel-space ``path, finding, x, y, w, h``
    CSV (as ``make_synthetic_dataset`` writes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: box file not found")
    try:
        head = pd.read_csv(path, nrows=0)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read box CSV: {exc}") from None
    columns = [str(c).strip() for c in head.columns]
    if columns and columns[0] == "Image Index":
        from xraytriage.data.nih import NIH_BOX_SPACE, read_bbox_list

        boxes = read_bbox_list(path).rename(columns={"image_index": "image"})
        return GroundTruth(boxes[["image", "finding", "x", "y", "w", "h"]], float(NIH_BOX_SPACE), str(path))
    required = {"path", "finding", "x", "y", "w", "h"}
    if not required <= set(columns):
        raise ConfigError(
            f"{path}: expected the NIH BBox_List columns or {', '.join(sorted(required))}; found {', '.join(columns)}"
        )
    table = pd.read_csv(path)
    boxes = pd.DataFrame(
        {
            "image": table["path"].astype(str).map(lambda p: Path(p).name),
            "finding": table["finding"].astype(str).map(canonical_label),
            **{c: pd.to_numeric(table[c], errors="coerce") for c in ("x", "y", "w", "h")},
        }
    ).dropna()
    return GroundTruth(boxes.reset_index(drop=True), None, str(path))


def index_images(folders: Sequence[str | Path]) -> dict[str, Path]:
    """File name -> path for every image under ``folders`` (the first wins on duplicate names)."""
    from xraytriage.io import iter_input_files

    found: dict[str, Path] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder}: image folder not found")
        for path in iter_input_files([folder]):
            found.setdefault(path.name, path)
    return found


NIH_PATIENT = re.compile(r"^(\d{8})_\d{3}")


def patient_of(name: str) -> str:
    """NIH file names carry the patient (``00013118_008.png``); other images are their own patient."""
    match = NIH_PATIENT.match(name)
    return match.group(1) if match else Path(name).stem
