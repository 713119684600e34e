"""Knowledge distillation from another model's saved predictions (soft targets).

NIH labels are text-mined from reports and noisy; a stronger model's probabilities on the same
images (the CheXNet reproduction's, ``../shared/data/anchors``) carry what it learned from 78k
images. For each training image the teacher predicted, the target of every finding it has
becomes ``(1 - w) * label + w * p_teacher``: binary cross-entropy is linear in its target, so
this is exactly ``(1 - w) * BCE(label) + w * BCE(p_teacher)``. Images and findings without a
teacher prediction keep their label; validation and the sampler never see the soft targets.

The teacher file is read at training time only for the training split's rows, so out-of-fold
predictions of a fold model never used the teacher's opinion of the held-out images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError
from xraytriage.labels import canonical_label
from xraytriage.train.config import DistillConfig

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("Image Index", "image", "path", "file", "filename")


def read_teacher(path: str | Path) -> pd.DataFrame:
    """Teacher probabilities indexed by file name, one column per canonical finding name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: distillation predictions CSV not found")
    frame = pd.read_csv(path)
    key = next((c for c in IMAGE_COLUMNS if c in frame.columns), None)
    if key is None:
        raise ConfigError(f"{path}: no image column (expected one of {', '.join(IMAGE_COLUMNS)})")
    probs = {canonical_label(c): c for c in frame.columns if c.startswith("prob_")}
    if not probs:
        raise ConfigError(f"{path}: no prob_<finding> columns")
    out = frame[list(probs.values())].apply(pd.to_numeric, errors="coerce")
    out.columns = list(probs)
    values = out.to_numpy(dtype=np.float64)
    bad = np.isfinite(values) & ((values < 0) | (values > 1))
    if bad.any():
        raise ConfigError(f"{path}: probabilities outside [0, 1] (e.g. {values[bad][0]!r})")
    out.index = frame[key].astype(str).map(lambda p: Path(p).name)
    if out.index.duplicated().any():
        raise ConfigError(f"{path}: image {out.index[out.index.duplicated()][0]!r} listed more than once")
    return out


def teacher_matrix(dataset: RadiographDataset, label_names: list[str], teacher: pd.DataFrame) -> np.ndarray:
    """Rows of ``dataset`` x ``label_names``: the teacher's probability, NaN where it has none."""
    names = dataset.table["path"].map(lambda p: Path(p).name)
    out = np.full((len(dataset), len(label_names)), np.nan, dtype=np.float32)
    rows = names.isin(teacher.index).to_numpy()
    for j, label in enumerate(label_names):
        if label in teacher.columns and rows.any():
            out[rows, j] = teacher.loc[names[rows], label].to_numpy(dtype=np.float32)
    return out


class SoftTargets:
    """Blends the teacher into a training batch's targets, by the rows' dataset indices."""

    def __init__(self, teacher: np.ndarray, weight: float) -> None:
        self.teacher = torch.as_tensor(teacher, dtype=torch.float32)
        self.weight = float(weight)
        self.known = torch.isfinite(self.teacher)

    def blend(self, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Hard targets where the teacher is silent (or the label unknown), the mix elsewhere."""
        index = index.cpu()
        teacher = self.teacher[index].to(targets.device)
        known = self.known[index].to(targets.device)
        usable = known & (targets >= 0) & (targets <= 1)
        mixed = (1 - self.weight) * targets + self.weight * torch.nan_to_num(teacher)
        return torch.where(usable, mixed, targets)


def build_soft_targets(
    config: DistillConfig, train_set: RadiographDataset, label_names: list[str]
) -> SoftTargets | None:
    """None when distillation is off; otherwise the training rows' soft targets (logged)."""
    if not config.predictions or config.weight == 0:
        return None
    matrix = teacher_matrix(train_set, label_names, read_teacher(config.predictions))
    images = int(np.isfinite(matrix).any(axis=1).sum())
    if images == 0:
        raise ConfigError(
            f"{config.predictions}: none of the {len(train_set)} training images has a prediction"
        )
    log.info("distillation: teacher predictions for %d of %d training images (weight %.2f)",
             images, len(train_set), config.weight)  # fmt: skip
    return SoftTargets(matrix, config.weight)
