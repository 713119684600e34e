"""torch.distributed for training: detect a ``torchrun`` launch from its environment, start the
process group (NCCL on GPUs, Gloo on CPU), and offer the few collectives the trainer needs.

One process per device. Rank 0 alone writes logs, checkpoints and summaries; every rank computes
the same validation metrics (predictions are gathered), so early stopping and ReduceLROnPlateau
take identical decisions everywhere.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from xraytriage.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (just ``[obj]`` when not distributed)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def launched_distributed() -> bool:
    """True inside ``torchrun`` (or any launcher setting WORLD_SIZE > 1 and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group described by the environment; a single process otherwise."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                           dist.get_backend())  # fmt: skip
    if not launched_distributed():
        return DistContext()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and not device.startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (local %d), backend %s", rank, world, local_rank, backend)
    return DistContext(rank, world, local_rank, backend, owns_group=True)


def resolve_device(preference: str, ctx: DistContext) -> torch.device:
    """auto -> cuda (this rank's GPU) when available, else cpu; ``cuda`` in DDP -> cuda:LOCAL_RANK."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {preference!r} requested but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
    return device
