"""Which training images each epoch sees: plain shuffling, a weighted random sampler built from
label prevalences, over-sampling of images with rare findings, under-sampling of images with
none, or group-balanced draws (every collection x normal/abnormal cell equally often, so a
collection that holds only abnormal images cannot teach "this collection means disease").

One sampler class does all four and also shards for distributed training: every rank draws the
same epoch plan from ``(seed, epoch)`` and takes its own slice (what ``DistributedSampler``
does for plain shuffling). Because the plan depends only on the seed and the epoch, a resumed run
sees exactly the batches it would have seen without the interruption.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError
from xraytriage.labels import abnormal_target
from xraytriage.train.config import SamplerConfig


def _positives(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels) == 1


def image_weights(labels: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-image sampling weight: (1 / count of its rarest positive label) ** power; images with
    no positive label count as one more class. Each label then gets about equal draws."""
    pos = _positives(labels)
    counts = pos.sum(axis=0).astype(np.float64)
    none = ~pos.any(axis=1)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    weights = np.where(pos, inverse[None, :], 0.0).max(axis=1) if pos.shape[1] else np.zeros(len(pos))
    if none.any():
        weights[none] = 1.0 / none.sum()
    return np.power(weights, power)


def oversample_factors(labels: np.ndarray, max_factor: float = 10.0) -> np.ndarray:
    """Integer repeat count per image: rarer positive labels are repeated up to the most common
    label's count (capped at ``max_factor``); images without positives appear once."""
    pos = _positives(labels)
    counts = pos.sum(axis=0).astype(np.float64)
    if not counts.any():
        return np.ones(len(pos), dtype=np.int64)
    target = max(counts.max(), (~pos.any(axis=1)).sum())
    ratio = np.where(counts > 0, np.minimum(target / np.maximum(counts, 1), max_factor), 1.0)
    factors = np.where(pos, ratio[None, :], 1.0).max(axis=1)
    return np.maximum(1, np.rint(factors)).astype(np.int64)


def sampling_strata(dataset: RadiographDataset, group_by: str = "collection") -> np.ndarray:
    """``"<group>|abnormal"`` / ``"<group>|normal"`` / ``"<group>|unknown"`` per image, the
    cells group-balanced sampling draws equally (abnormal: any finding vs No Finding)."""
    if group_by not in dataset.table.columns:
        raise ConfigError(f"sampler.group_by: the training data has no {group_by!r} column")
    abnormal = abnormal_target(dataset.labels, dataset.label_names)
    state = np.where(np.isnan(abnormal), "unknown", np.where(abnormal == 1, "abnormal", "normal"))
    groups = dataset.table[group_by].astype(str).to_numpy()
    return np.char.add(np.char.add(groups.astype(str), "|"), state.astype(str))


def stratum_weights(strata: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Per-image weight (1 / size of its stratum) ** power: every stratum (e.g. one collection's
    normal or abnormal images) is then drawn equally often overall; power 0 = uniform."""
    _, inverse, counts = np.unique(np.asarray(strata).astype(str), return_inverse=True, return_counts=True)
    return np.power(1.0 / counts[inverse].astype(np.float64), power)


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank; call ``set_epoch`` before each epoch."""

    def __init__(
        self,
        labels: np.ndarray,
        config: SamplerConfig | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        strata: np.ndarray | None = None,
    ) -> None:
        self.labels = np.asarray(labels, dtype=np.float32)
        self.config = config or SamplerConfig()
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        name = self.config.name
        n = len(self.labels)
        if name == "group_balanced" and strata is None:
            raise ValueError("group_balanced sampling needs the strata of the images")
        if name in ("weighted", "group_balanced"):
            weights = (
                image_weights(self.labels, self.config.power)
                if name == "weighted"
                else stratum_weights(strata, self.config.power)
            )
            self.probabilities = weights / weights.sum() if weights.sum() > 0 else np.full(n, 1.0 / n)
        elif name == "oversample":
            self.factors = oversample_factors(self.labels, self.config.max_factor)
        self.plan_size = len(self.plan(0))
        self.per_rank = math.ceil(self.plan_size / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, epoch: int) -> np.ndarray:
        """The whole epoch's index list (all ranks), a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch, 7919])
        n = len(self.labels)
        name = self.config.name
        if name in ("weighted", "group_balanced"):
            size = self.config.num_samples or n
            return rng.choice(n, size=size, replace=True, p=self.probabilities)
        if name == "oversample":
            return rng.permutation(np.repeat(np.arange(n), self.factors))
        if name == "undersample":
            has_pos = _positives(self.labels).any(axis=1)
            pos_idx, neg_idx = np.flatnonzero(has_pos), np.flatnonzero(~has_pos)
            keep = min(len(neg_idx), max(1, round(self.config.neg_ratio * max(len(pos_idx), 1))))
            chosen = rng.choice(neg_idx, size=keep, replace=False) if len(neg_idx) else neg_idx
            return rng.permutation(np.concatenate([pos_idx, chosen]))
        return rng.permutation(n)

    def __iter__(self) -> Iterator[int]:
        plan = self.plan(self.epoch)
        total = self.per_rank * self.world_size
        if total > len(plan):  # pad by wrapping so every rank runs the same number of steps
            plan = np.concatenate([plan, plan[: total - len(plan)]])
        return iter(plan[self.rank : total : self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_rank


class ShardSampler(Sampler[int]):
    """Evaluation: rank r takes indices r, r + W, r + 2W, ... in order, without padding."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
