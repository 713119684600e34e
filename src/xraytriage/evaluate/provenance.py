"""What an evaluation evaluated: model, data, command, and whether the model saw the images.

A number without its provenance cannot be checked or compared; and an AUC measured on images
the model was trained on is optimistic without saying so. This module builds the header that
every ``metrics.json`` and ``report.html`` carries, and counts the evaluated images that are
among the checkpoint's ``training_images``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.evaluate.predictions import LABEL, source_paths

EXAMPLES = 5
"""How many overlapping image names the report lists."""


def file_sha256(path: str | Path, length: int = 16) -> str:
    """The first ``length`` hex digits of a file's SHA-256 (identifies a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """A stable hash of the evaluated images (file names) and their ground truth, so two
    reports can be seen to be about the same data; independent of row order."""
    names = source_paths(frame).map(lambda p: Path(p).name).to_numpy()
    order = np.argsort(names, kind="stable")
    h = hashlib.sha1()
    for name in names[order]:
        h.update(str(name).encode())
    for col in sorted(c for c in frame.columns if c.startswith(LABEL)):
        h.update(col.encode())
        h.update(
            np.nan_to_num(frame[col].to_numpy(dtype=np.float64)[order], nan=-9).astype(np.int8).tobytes()
        )
    return h.hexdigest()[:16]


def training_overlap(frame: pd.DataFrame, checkpoint, excluded: int = 0) -> dict[str, Any]:
    """How many evaluated images the checkpoint lists among its training images (by file name,
    as ``Checkpoint.seen_in_training``); ``checked`` is False when it does not list them."""
    if not checkpoint.training_images:
        return {
            "checked": False,
            "reason": "the checkpoint does not record its training images",
            "excluded": excluded,
        }
    paths = source_paths(frame).tolist()
    seen = checkpoint.seen_in_training(paths)
    n = len(paths)
    return {
        "checked": True,
        "training_images": len(checkpoint.training_images),
        "evaluated_images": n,
        "overlapping": len(seen),
        "share": len(seen) / n if n else 0.0,
        "excluded": excluded,
        "examples": [Path(p).name for p in seen[:EXAMPLES]],
    }


def overlap_warning(overlap: dict[str, Any]) -> str | None:
    """The one-line warning for the console and the report, or None when there is no overlap."""
    if not overlap.get("checked") or not overlap.get("overlapping"):
        return None
    return (
        f"{overlap['overlapping']} of {overlap['evaluated_images']} evaluated images "
        f"({overlap['share']:.1%}) were used to train this model: the numbers below are optimistic "
        "for them. Rerun with --exclude-training-images to score only images the model has not seen."
    )


def build_provenance(
    frame: pd.DataFrame,
    *,
    model: str | None = None,
    checkpoint=None,
    checkpoint_path: str | Path | None = None,
    predictions_path: str | Path | None = None,
    dataset: str | None = None,
    group_by: str | None = None,
    sample: str | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The header of an evaluation: what model (name, version, file hash), what data (dataset,
    images, patients, fingerprint, groups), when, and the command that made it."""
    out: dict[str, Any] = {}
    if checkpoint is not None:
        out["model"] = checkpoint.name
        out["model_version"] = f"xraytriage {checkpoint.package_version}, created {checkpoint.created}"
        out["training_data_fingerprint"] = checkpoint.data_fingerprint or None
    elif model:
        out["model"] = model
    if checkpoint_path is not None:
        out["checkpoint"] = str(checkpoint_path)
        out["checkpoint_sha256"] = file_sha256(checkpoint_path)
    if predictions_path is not None:
        out["predictions"] = str(predictions_path)
        out["predictions_sha256"] = file_sha256(predictions_path)
    out["dataset"] = dataset or "labels in the predictions file"
    if sample:
        out["sample"] = sample
    out["images"] = len(frame)
    out["patients"] = int(frame["patient_id"].nunique()) if "patient_id" in frame.columns else None
    out["data_fingerprint"] = frame_fingerprint(frame)
    if group_by:
        from xraytriage.evaluate.grouped import group_labels

        counts = pd.Series(group_labels(frame, group_by)).value_counts().sort_index()
        out["groups"] = f"{group_by}: " + ", ".join(f"{g} ({n})" for g, n in counts.items())
    out["date"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    words = list(sys.argv if argv is None else argv)
    if words:
        words[0] = Path(words[0]).name
    out["command"] = shlex.join(words)
    return out
