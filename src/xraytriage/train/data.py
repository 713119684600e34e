"""Getting images to the trainer fast: the dataset from its registry, the patient-grouped
validation split, and uint8 images from the cache, from memory, or decoded on the fly.

Workers only hand out uint8 rows (normalisation and augmentation run on the batch, on the
accelerator). With a cache or preloaded images a whole batch is one fancy-indexing copy
(``__getitems__``), so a GPU is not starved by per-image Python work.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xraytriage.data.base import RadiographDataset
from xraytriage.data.cache import ImageCache
from xraytriage.data.registry import load_dataset
from xraytriage.data.splits import kfold_indices, train_val_test_split
from xraytriage.data.torch_dataset import UInt8Dataset, UInt8Source, collate
from xraytriage.errors import ConfigError, ImageReadError
from xraytriage.io import read_radiograph
from xraytriage.preprocess import PreprocessContract
from xraytriage.progress import progress_bar

log = logging.getLogger(__name__)

PRELOAD_LIMIT_BYTES = 2 << 30


def load_source(kind: str, options: dict[str, Any]) -> RadiographDataset:
    """``xraytriage.data.registry.load_dataset(kind, **options)``; errors name the kind."""
    try:
        return load_dataset(kind, **options)
    except TypeError as exc:  # wrong option names
        raise ConfigError(f"data.options for kind {kind!r}: {exc}") from None


def train_val_indices(
    dataset: RadiographDataset, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Patient-grouped split stratified by each image's rarest finding (``data/splits.py``)."""
    parts = train_val_test_split(dataset, val=val_fraction, test=0.0, seed=seed)
    if len(parts.get("val", [])) == 0 or len(parts["train"]) == 0:
        raise ConfigError(
            f"validation split of {len(dataset)} images ({dataset.table['patient_id'].nunique()} patients) "
            f"with val_fraction {val_fraction} leaves an empty side"
        )
    return parts["train"], parts["val"]


def kfold(dataset: RadiographDataset, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return kfold_indices(dataset, n_splits=folds, seed=seed)


# --- image sources ------------------------------------------------------------------------------
class MemorySource:
    """Every image of a dataset decoded once into one uint8 array (the cache's shape, in RAM)."""

    def __init__(self, paths: list[str], array: np.ndarray) -> None:
        self.array = array
        self._row = {p: i for i, p in enumerate(paths)}

    def lookup(self, paths: list[str]) -> np.ndarray:
        return np.array([self._row.get(p, -1) for p in paths], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.array)


class _Decode(Dataset):
    def __init__(self, dataset: RadiographDataset, contract: PreprocessContract) -> None:
        self.paths, self.contract = dataset.paths, contract

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, self.contract.to_uint8(read_radiograph(self.paths[i]).pixels), ""
        except ImageReadError as exc:
            return i, None, str(exc)


def _as_list(batch):
    return batch


def preload(
    dataset: RadiographDataset, contract: PreprocessContract, workers: int = 0, progress: bool = True
) -> tuple[MemorySource, RadiographDataset]:
    """Decode every image (in ``workers`` processes); unreadable files are dropped with a
    warning naming each, so one bad file never stops training. Returns (source, kept dataset)."""
    size = contract.size
    array = np.zeros((len(dataset), size, size), dtype=np.uint8)
    ok = np.zeros(len(dataset), dtype=bool)
    loader = DataLoader(_Decode(dataset, contract), batch_size=32, num_workers=workers, collate_fn=_as_list)
    errors = []
    bar = progress_bar(total=len(dataset), desc="decode", unit="img", disable=not progress, leave=False)
    for batch in loader:
        for i, image, error in batch:
            if image is None:
                errors.append(error)
            else:
                array[i], ok[i] = image, True
        bar.update(len(batch))
    bar.close()
    for error in errors[:20]:
        log.warning("skipping unreadable image: %s", error)
    if len(errors) > 20:
        log.warning("... and %d more unreadable images skipped", len(errors) - 20)
    kept = dataset if ok.all() else dataset.subset(np.flatnonzero(ok))
    paths = dataset.paths
    return MemorySource([p for p, k in zip(paths, ok, strict=True) if k], array[ok]), kept


def open_cache(
    path: str,
    dataset: RadiographDataset,
    contract: PreprocessContract,
    build: bool,
    workers: int,
    progress: bool,
) -> UInt8Source:
    """The uint8 cache (``data/cache.py``) under ``path`` for this contract; with ``build``,
    images of ``dataset`` not cached yet are added first (so one command trains from a cache)."""
    cache = ImageCache(path, contract)
    missing = int((cache.lookup(dataset.paths) < 0).sum())
    if missing and build:
        log.info("cache %s: adding %d images", cache.directory, missing)
        cache.build(dataset.paths, workers=max(1, workers), progress=progress)
        cache = ImageCache(path, contract)
    return cache


def image_source(
    dataset: RadiographDataset,
    contract: PreprocessContract,
    cache: str | None,
    preload_images: bool | None,
    workers: int,
    progress: bool,
    build_cache: bool = True,
) -> tuple[UInt8Source | None, RadiographDataset]:
    """Where the trainer reads uint8 images: the cache, a preloaded array, or nothing (decode).
    Images that cannot be decoded are dropped (each named in a warning)."""
    if cache:
        source = open_cache(cache, dataset, contract, build_cache, workers, progress)
        rows = source.lookup(dataset.paths)
        failed = getattr(source, "errors", {})
        bad = np.array([p in failed for p in dataset.paths], dtype=bool)
        if bad.any():
            for path in [p for p in dataset.paths if p in failed][:20]:
                log.warning("skipping unreadable image: %s", failed[path])
            dataset = dataset.subset(np.flatnonzero(~bad))
            rows = rows[~bad]
        log.info("cache %s holds %d of %d images; the rest are decoded on the fly", cache, int((rows >= 0).sum()),
                 len(dataset))  # fmt: skip
        return source, dataset
    if preload_images is None:
        preload_images = len(dataset) * contract.size**2 <= PRELOAD_LIMIT_BYTES
    if preload_images:
        return preload(dataset, contract, workers=workers, progress=progress)
    return None, dataset


class TrainImages(UInt8Dataset):
    """``UInt8Dataset`` that never stops on a bad file (a black image with unknown labels, which
    the masked loss ignores) and serves whole batches in one copy from a cache or memory."""

    def __init__(
        self, dataset: RadiographDataset, contract: PreprocessContract, source: UInt8Source | None
    ) -> None:
        super().__init__(dataset, contract, source)
        self.labels = np.asarray(dataset.labels, dtype=np.float32)

    def _safe_image(self, index: int) -> tuple[np.ndarray, bool]:
        try:
            return np.asarray(self.image(index)), True
        except ImageReadError as exc:
            log.warning("unreadable image in training data: %s", exc)
            return np.zeros((self.contract.size, self.contract.size), np.uint8), False

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, ok = self._safe_image(index)
        labels = self.labels[index].copy()
        if not ok:
            labels[:] = np.nan
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(labels), index

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        if self.rows is not None and (self.rows[idx] >= 0).all():
            images = np.asarray(self.cache.array[self.rows[idx]])
            return torch.from_numpy(images), torch.from_numpy(self.labels[idx]), torch.from_numpy(idx)
        return collate([self[int(i)] for i in idx])


def batch_collate(batch):
    """Batches from ``__getitems__`` arrive collated already."""
    return batch if isinstance(batch, tuple) else collate(batch)
