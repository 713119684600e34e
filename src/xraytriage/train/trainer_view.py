"""What a callback may read of the trainer (MONAI handlers get ``engine.state``): a Protocol
below both :mod:`~xraytriage.train.callbacks` and :mod:`~xraytriage.train.trainer`, so callbacks
never import the trainer (no callbacks <-> trainer circle, issue #27). ``Trainer`` satisfies it
structurally; a test double or another loop can too. Typing only: it imports nothing at run time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from xraytriage.data.base import RadiographDataset
    from xraytriage.models.checkpoint import Checkpoint
    from xraytriage.models.factory import ModelConfig
    from xraytriage.train.config import TrainConfig
    from xraytriage.train.tracker import BestEpochTracker
    from xraytriage.train.writer import RunWriter


class TrainerView(Protocol):
    """The trainer's state and the two snapshots (checkpoint, resume state) callbacks use."""

    name: str
    output: Path
    config: TrainConfig
    model_cfg: ModelConfig
    train_set: RadiographDataset
    val_set: RadiographDataset
    label_names: list[str]
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    init_note: str
    writer: RunWriter
    tracker: BestEpochTracker
    epoch: int
    """The next epoch to run (0-based)."""
    history: list[dict[str, float]]

    def checkpoint(self, metrics: dict[str, float], epoch: int, thresholds: dict[str, float]) -> Checkpoint:
        """The model as a checkpoint after ``epoch`` with these validation metrics and thresholds."""
        ...

    def resume_state(self) -> dict[str, Any]:
        """Everything ``--resume`` needs to continue after the current epoch."""
        ...
