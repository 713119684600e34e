"""Everything a run writes into its folder, and reads back to resume::

    config.yaml          resolved config (loads back with ``xraytriage train``)
    metrics.csv          one row per epoch: lr, train_loss, val_loss, the named AUC means
                         (mean_auc_14_findings, mean_auc_all_outputs; xraytriage.auc_means),
                         auc/<label>, images/s
    tensorboard/         the same curves for TensorBoard
    best.pt, last.pt     servable xraytriage checkpoints
    last.state.pt        optimizer / scheduler / scaler / sampler / tracker state for ``--resume`` only
    val_predictions.csv  the best model's validation probabilities (path, patient_id, label, prob)
    summary.json         best epoch and metrics, epochs run, speed

Only the main process writes; every process may read.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from xraytriage.auc_means import training_mean_names
from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError
from xraytriage.models.checkpoint import Checkpoint, load_checkpoint
from xraytriage.models.factory import ModelConfig
from xraytriage.sanitize import csv_cell, write_csv, write_json
from xraytriage.train.config import TrainConfig

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

RESUME_STATE = "last.state.pt"


class RunWriter:
    """The run folder ``output`` of one network."""

    def __init__(self, output: str | Path, label_names: list[str]) -> None:
        self.output = Path(output)
        self.label_names = list(label_names)
        self.tensorboard: SummaryWriter | None = None

    @property
    def best_path(self) -> Path:
        return self.output / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.output / "last.pt"

    def holds_run(self) -> bool:
        return self.last_path.exists()

    # --- writing --------------------------------------------------------------------------------
    def start(self, config: TrainConfig) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        config.save(self.output / "config.yaml")

    def open_tensorboard(self, start_epoch: int) -> None:
        """TensorBoard's event file; a resumed run drops the curves after ``start_epoch``."""
        from torch.utils.tensorboard import SummaryWriter  # ~1 s (tensorboard), main process only

        self.tensorboard = SummaryWriter(str(self.output / "tensorboard"), purge_step=start_epoch + 1)

    def save_epoch(
        self, checkpoint: Checkpoint, improved: bool, half: bool, state: dict[str, Any], history: list[dict]
    ) -> None:
        """After an epoch: best.pt (when it improved), last.pt, the resume state and metrics.csv."""
        if improved:
            checkpoint.save(self.best_path, half=half)
        checkpoint.save(self.last_path, half=half)
        self._save_state(state)
        self._write_metrics_csv(history)

    def add_scalars(self, row: dict[str, float], epoch: int) -> None:
        if self.tensorboard is None:
            return
        for key, v in row.items():
            if key != "epoch" and isinstance(v, float) and math.isfinite(v):
                self.tensorboard.add_scalar(key if "/" in key else f"epoch/{key}", v, epoch)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    def _write_metrics_csv(self, history: list[dict[str, float]]) -> None:
        columns = ["epoch", "lr", "train_loss", "val_loss", *training_mean_names(self.label_names),
                   *[f"auc/{n}" for n in self.label_names], "images_per_s", "epoch_time_s"]  # fmt: skip
        with open(self.output / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writerow({c: csv_cell(c) for c in columns})
            for row in history:
                writer.writerow(
                    {
                        k: ("" if isinstance(v, float) and math.isnan(v) else csv_cell(v))
                        for k, v in row.items()
                    }
                )

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self.output / (RESUME_STATE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.output / RESUME_STATE)

    def write_predictions(self, val_set: RadiographDataset, probs: np.ndarray) -> None:
        table = val_set.table
        frame = pd.DataFrame({"path": table["path"], "patient_id": table["patient_id"]})
        for j, name in enumerate(self.label_names):
            frame[name] = val_set.labels[:, j]
            frame[f"prob_{name}"] = probs[:, j]
        write_csv(frame, self.output / "val_predictions.csv", index=False)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.output / "summary.json", summary)

    # --- reading --------------------------------------------------------------------------------
    def read_resume_state(
        self, fingerprint: str, model_cfg: ModelConfig
    ) -> tuple[dict[str, Any], Checkpoint] | None:
        """The interrupted run's state and last checkpoint, checked against this run (same labels,
        training data and model); None when there is nothing to resume."""
        path = self.output / RESUME_STATE
        if not (path.is_file() and self.last_path.is_file()):
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if list(state["label_names"]) != self.label_names:
            raise ConfigError(
                f"{self.output}: cannot resume, the run was trained on labels {state['label_names']}"
            )
        if state["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{self.output}: cannot resume, the training data differ from the interrupted run's"
            )
        last = load_checkpoint(self.last_path)
        if last.model != model_cfg:
            raise ConfigError(f"{self.output}: cannot resume, the run's model was {last.model}")
        return state, last

    def load_best(self) -> Checkpoint:
        return load_checkpoint(self.best_path)
