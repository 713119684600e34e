"""The torch-facing view of a dataset: uint8 images of the preprocessing contract + labels.

Normalisation and augmentation happen on the batch (see ``PreprocessContract.normalize`` and
``xraytriage.train``), so workers only decode, or only copy rows out of the cache.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from xraytriage.data.base import RadiographDataset
from xraytriage.preprocess import PreprocessContract


class UInt8Source(Protocol):
    """Anything that can hand out preprocessed uint8 images by path (the cache does)."""

    def lookup(self, paths: list[str]) -> np.ndarray: ...  # row per path, -1 when absent

    @property
    def array(self) -> np.ndarray: ...  # (rows, size, size) uint8


class UInt8Dataset(Dataset):
    """Item ``i`` -> (uint8 tensor size x size, float32 label vector with NaN, index)."""

    def __init__(
        self, dataset: RadiographDataset, contract: PreprocessContract, cache: UInt8Source | None = None
    ) -> None:
        self.dataset = dataset
        self.contract = contract
        self.cache = cache
        self.rows = cache.lookup(dataset.paths) if cache is not None else None

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> np.ndarray:
        if self.rows is not None and self.rows[index] >= 0:
            return np.asarray(self.cache.array[self.rows[index]])
        return self.contract.to_uint8(self.dataset.read(index).pixels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image = torch.from_numpy(np.ascontiguousarray(self.image(index)))
        labels = torch.from_numpy(self.dataset.labels[index].copy())
        return image, labels, index


def collate(batch: list[tuple[Any, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels, index = zip(*batch, strict=True)
    return torch.stack(images), torch.stack(labels), torch.tensor(index)
