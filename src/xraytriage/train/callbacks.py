"""What happens around the training loop without changing it (MONAI's "handlers"): saving the
run's files after every epoch and logging progress. The trainer calls them on the main process
only, in list order, at four events."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xraytriage.train.metrics import youden_thresholds

if TYPE_CHECKING:
    from xraytriage.train.trainer_view import TrainerView

log = logging.getLogger("xraytriage.train.trainer")


@dataclass
class EpochRecord:
    """One finished epoch: its metrics.csv row, validation metrics and probabilities."""

    epoch: int
    """1-based."""
    row: dict[str, float]
    metrics: dict[str, float]
    probs: np.ndarray | None
    """Validation probabilities (None without a validation set)."""
    improved: bool


class Callback:
    """Override the events you need; each gets the trainer, seen through :class:`TrainerView`."""

    def on_fit_start(self, trainer: TrainerView) -> None:
        """After set-up and resume, before the first epoch."""

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        """After an epoch's training, validation and best-epoch bookkeeping."""

    def on_fit_end(self, trainer: TrainerView) -> None:
        """After the last epoch (or early stopping); not after an interruption."""

    def on_interrupt(self, trainer: TrainerView) -> None:
        """Ctrl-C: completed epochs are saved."""

    def close(self, trainer: TrainerView) -> None:
        """Always, last."""


class SaveRun(Callback):
    """best.pt / last.pt (with Youden thresholds on the validation set), the resume state,
    metrics.csv and TensorBoard, after every epoch."""

    def on_fit_start(self, trainer: TrainerView) -> None:
        trainer.writer.open_tensorboard(trainer.epoch)

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        thresholds = (
            youden_thresholds(trainer.val_set.labels, record.probs, label_names=trainer.label_names)
            if record.probs is not None
            else {}
        )
        checkpoint = trainer.checkpoint(record.metrics, record.epoch, thresholds)
        trainer.writer.save_epoch(
            checkpoint, record.improved, trainer.config.save_half, trainer.resume_state(), trainer.history
        )
        trainer.writer.add_scalars(record.row, record.epoch)

    def close(self, trainer: TrainerView) -> None:
        trainer.writer.close()


class LogProgress(Callback):
    """One line when training starts, one per epoch (``*`` marks a new best), and why it ended."""

    def on_fit_start(self, trainer: TrainerView) -> None:
        precision = "float32" if trainer.amp_dtype is None else str(trainer.amp_dtype).removeprefix("torch.")
        log.info("%s: %d train / %d val images, %d labels, %s on %s in %s%s (%s)", trainer.name, len(trainer.train_set),
                 len(trainer.val_set), len(trainer.label_names), trainer.model_cfg.backbone, trainer.device, precision,
                 ", channels_last" if trainer.channels_last else "", trainer.init_note)  # fmt: skip

    def on_epoch_end(self, trainer: TrainerView, record: EpochRecord) -> None:
        row: dict[str, Any] = record.row
        monitor = trainer.tracker.metric
        log.info("%s epoch %d/%d: train_loss %.4f val_loss %.4f %s %.4f lr %.2e %.0f img/s%s",
                 trainer.name, record.epoch, trainer.config.epochs, row["train_loss"], row["val_loss"], monitor,
                 row.get(monitor, float("nan")), row["lr"], row["images_per_s"], " *" if record.improved else "")  # fmt: skip

    def on_fit_end(self, trainer: TrainerView) -> None:
        if trainer.tracker.stopped:
            log.info(
                "%s: early stopping after epoch %d (best epoch %s)",
                trainer.name,
                len(trainer.history),
                trainer.tracker.best_epoch,
            )

    def on_interrupt(self, trainer: TrainerView) -> None:
        log.warning("%s: interrupted; completed epochs are saved, continue with --resume", trainer.output)


def default_callbacks() -> list[Callback]:
    return [SaveRun(), LogProgress()]
