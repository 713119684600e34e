"""Run a checkpoint over a dataset and keep everything evaluation needs in one table.

The predictions table has one row per image that could be read:
``path, image, patient_id, study_id, view``, then per checkpoint label ``logit_<L>`` (raw),
``prob_<L>`` (calibrated by the checkpoint) and, for labels the dataset annotates, ``label_<L>``
(1 / 0 / NaN; dataset labels the model does not predict get a ``label_`` column too, never
scored but used e.g. to mark critical studies); plus ``abnormal_probability`` (the checkpoint's P(abnormal), the triage priority)
and ``abnormal`` (the dataset's derived abnormal target). Unreadable images are listed in
``errors`` and skipped; one bad file never stops the run. The same layout is what
``evaluate --predictions`` reads back (only ``image`` or ``path`` and ``prob_*`` are required;
ground truth may also be a bare ``<label>`` column, as in training's ``val_predictions.csv`` and
``oof_predictions.csv``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from xraytriage.data.base import RadiographDataset
from xraytriage.data.torch_dataset import UInt8Dataset, UInt8Source
from xraytriage.errors import ConfigError, XRayTriageError
from xraytriage.labels import ABNORMAL, abnormal_target, canonical_label, map_labels
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.progress import progress_bar
from xraytriage.sanitize import read_csv_cells

log = logging.getLogger(__name__)

PROB, LABEL, LOGIT = "prob_", "label_", "logit_"
GROUP_COLUMNS = ("collection", "view", "sex", "age")
"""Metadata carried into predictions so `evaluate --group-by` can split by it."""
IMAGE_KEY_COLUMNS = ("image", "Image Index", "path", "Path", "filename", "file")


@dataclass
class Predictions:
    frame: pd.DataFrame
    label_names: list[str]
    errors: list[dict[str, str]] = field(default_factory=list)

    def labels(self, names: Sequence[str] | None = None) -> np.ndarray:
        return label_matrix(self.frame, names or self.label_names)

    def probabilities(self, names: Sequence[str] | None = None) -> np.ndarray:
        return prob_matrix(self.frame, names or self.label_names)

    def logits(self, names: Sequence[str] | None = None) -> np.ndarray:
        names = names or self.label_names
        return self.frame[[LOGIT + n for n in names]].to_numpy(dtype=np.float64)


def prob_labels(frame: pd.DataFrame) -> list[str]:
    """Label names that have a ``prob_`` column, in column order."""
    return [c[len(PROB) :] for c in frame.columns if c.startswith(PROB)]


def evaluable_labels(frame: pd.DataFrame) -> list[str]:
    """Labels with both a probability and a ground-truth column."""
    return [n for n in prob_labels(frame) if LABEL + n in frame.columns]


def label_matrix(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """(N, L) ground truth; a label without a column is all NaN."""
    cols = [
        frame[LABEL + n].to_numpy(dtype=np.float64) if LABEL + n in frame else np.full(len(frame), np.nan)
        for n in names
    ]
    return np.column_stack(cols) if cols else np.zeros((len(frame), 0))


def prob_matrix(frame: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    return frame[[PROB + n for n in names]].to_numpy(dtype=np.float64)


class _SafeImages(Dataset):
    """Wraps UInt8Dataset so a failed read becomes an error item instead of an exception."""

    def __init__(self, images: UInt8Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            return index, self.images.image(index), ""
        except (XRayTriageError, OSError, ValueError) as exc:
            return index, None, str(exc)


def abnormal_truth(labels: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Ground-truth "abnormal" per image: the dataset's own ``Abnormal`` label when it has one
    (MURA), else derived from its findings (:func:`xraytriage.labels.abnormal_target`)."""
    canonical = [canonical_label(n) for n in names]
    if ABNORMAL in canonical:
        return np.asarray(labels, dtype=np.float32)[:, canonical.index(ABNORMAL)]
    return abnormal_target(labels, names)


def _collate(items):
    return items


def _image_name(path: str) -> str:
    return Path(str(path)).name


def path_key(path: str, depth: int) -> str:
    """The last ``depth`` components of a path (``depth=1``: the file name)."""
    parts = str(path).replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-depth:])


def source_paths(frame: pd.DataFrame) -> pd.Series:
    """The fullest image reference a predictions table has: ``path`` if present, else ``image``."""
    return frame["path" if "path" in frame.columns else "image"].astype(str)


def join_depth(*paths: pd.Series, max_depth: int = 8) -> int:
    """Fewest trailing path components that name every image uniquely on every side: 1 (file
    name) for NIH-style unique names, more for MURA's ``.../study1_positive/image1.png``."""
    for depth in range(1, max_depth + 1):
        if all(not p.map(lambda v, d=depth: path_key(v, d)).duplicated().any() for p in paths):
            return depth
    raise ConfigError("image paths are not unique, even with their parent folders; cannot join")


def join_on_images(
    left: pd.DataFrame, right: pd.DataFrame, right_paths: pd.Series | None = None
) -> pd.DataFrame:
    """Inner join of two tables on image identity: the file name, or as many parent folders as
    it takes to make names unique on both sides."""
    right_paths = source_paths(right) if right_paths is None else right_paths
    depth = join_depth(source_paths(left), right_paths)
    key = "__image_key"
    lhs = left.assign(**{key: source_paths(left).map(lambda v: path_key(v, depth)).to_numpy()})
    rhs = right.assign(**{key: right_paths.map(lambda v: path_key(v, depth)).to_numpy()})
    return lhs.merge(rhs, on=key, how="inner").drop(columns=key)


def predict_dataset(
    checkpoint: Checkpoint,
    dataset: RadiographDataset,
    batch_size: int = 32,
    cache: UInt8Source | None = None,
    device: str = "cpu",
    num_workers: int = 0,
    progress: bool = True,
    predictor=None,
) -> Predictions:
    """Predict every image of ``dataset``; ``predictor`` defaults to a ``TorchPredictor``
    (anything with ``predict_logits(uint8 N x S x S)`` works, e.g. an ONNX backend)."""
    if predictor is None:
        from xraytriage.models.inference import TorchPredictor

        predictor = TorchPredictor(checkpoint, device=device)
    names = list(checkpoint.label_names)
    images = UInt8Dataset(dataset, checkpoint.preprocess, cache=cache)
    loader = DataLoader(
        _SafeImages(images),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    kept: list[int] = []
    logits: list[np.ndarray] = []
    errors: list[dict[str, str]] = []
    with torch.inference_mode():
        for batch in progress_bar(loader, desc="predict", unit="batch", disable=not progress):
            ok = [(i, img) for i, img, err in batch if img is not None]
            for i, _, err in batch:
                if err:
                    errors.append({"path": dataset.table.at[i, "path"], "error": err})
                    log.warning("skipped %s", err)
            if ok:
                kept += [i for i, _ in ok]
                logits.append(np.asarray(predictor.predict_logits(np.stack([img for _, img in ok]))))
    z = np.concatenate(logits) if logits else np.zeros((0, len(names)), np.float32)
    probs = checkpoint.probabilities(z) if len(z) else np.zeros((0, len(names)), np.float32)
    table = dataset.table.iloc[kept].reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "path": table["path"].astype(str),
            "image": table["path"].map(_image_name),
            "patient_id": table["patient_id"].astype(str),
            "study_id": table["study_id"].astype(str),
            "view": table["view"].astype(str),
        }
    )
    for col in GROUP_COLUMNS:
        if col in table.columns:
            frame[col] = table[col].to_numpy()
    truth = map_labels(dataset.labels[kept], dataset.label_names, names)
    dataset_names = {canonical_label(n) for n in dataset.label_names}
    for j, name in enumerate(names):
        frame[LOGIT + name] = z[:, j].astype(np.float64)
        frame[PROB + name] = probs[:, j].astype(np.float64)
        if canonical_label(name) in dataset_names:
            frame[LABEL + name] = truth[:, j].astype(np.float64)
    # ground truth the model does not predict: not scored, but it marks e.g. critical studies
    model_names = {canonical_label(n) for n in names}
    for j, name in enumerate(dataset.label_names):
        if canonical_label(name) not in model_names and LABEL + name not in frame.columns:
            frame[LABEL + name] = dataset.labels[kept, j].astype(np.float64)
    frame["abnormal_probability"] = checkpoint.abnormal_probability(probs) if len(probs) else []
    frame["abnormal"] = abnormal_truth(dataset.labels[kept], dataset.label_names)
    return Predictions(frame=frame, label_names=names, errors=errors)


def read_predictions_csv(path: str | Path) -> pd.DataFrame:
    """A predictions CSV from this tool or another model: needs an image column (``image``,
    ``Image Index``, ``path``...) and ``prob_<label>`` columns; label names are harmonised
    (``prob_Pleural_Thickening`` -> ``prob_Pleural Thickening``) and ``image`` is the file name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: predictions CSV not found")
    frame = read_csv_cells(path)
    key = next((c for c in IMAGE_KEY_COLUMNS if c in frame.columns), None)
    if key is None:
        raise ConfigError(f"{path}: no image column (expected one of {', '.join(IMAGE_KEY_COLUMNS)})")
    renamed = {}
    for col in frame.columns:
        for prefix in (PROB, LABEL, LOGIT):
            if col.startswith(prefix):
                renamed[col] = prefix + canonical_label(col[len(prefix) :])
    frame = frame.rename(columns=renamed)
    if not prob_labels(frame):
        raise ConfigError(f"{path}: no prob_<label> columns")
    # training's val_predictions.csv / oof_predictions.csv keep the truth in a bare <label> column
    bare = {canonical_label(c): c for c in frame.columns if not c.startswith((PROB, LABEL, LOGIT))}
    for name in prob_labels(frame):
        if LABEL + name not in frame.columns and name in bare:
            frame[LABEL + name] = pd.to_numeric(frame[bare[name]], errors="coerce")
    if frame[key].astype(str).duplicated().any():
        dup = frame.loc[frame[key].astype(str).duplicated(), key].iloc[0]
        raise ConfigError(f"{path}: image {dup!r} listed more than once")
    frame["image"] = frame[key].astype(str).map(_image_name)
    for col in ("patient_id", "study_id"):
        if col in frame.columns:
            frame[col] = frame[col].astype(str)
    return frame


def attach_labels(frame: pd.DataFrame, dataset: RadiographDataset) -> pd.DataFrame:
    """Add ``label_<L>`` for every dataset label (and patient/study ids, abnormal) from a
    dataset, joined on image identity (:func:`join_on_images`), for predictions saved without
    ground truth. Images the dataset lacks are dropped; labels only one side has are kept but
    never scored."""
    truth = pd.DataFrame(dataset.labels.astype(np.float64), columns=[LABEL + n for n in dataset.label_names])
    truth["abnormal"] = abnormal_truth(dataset.labels, dataset.label_names)
    for col in ("patient_id", "study_id"):
        truth[col] = dataset.table[col].astype(str).to_numpy()
    for col in GROUP_COLUMNS:
        if col in dataset.table.columns and col not in truth.columns:
            truth[col] = dataset.table[col].to_numpy()
    keep = frame.drop(columns=[c for c in truth.columns if c in frame.columns])
    return join_on_images(keep, truth, right_paths=dataset.table["path"].astype(str))
