"""The training loop for one network: epochs, validation, best epoch, early stopping, resume.

The loop is small because its parts live beside it: the network (``network``), the optimiser
set-up (``optim.Optimisation``), the best-epoch tracker (``tracker``), the run folder
(``writer.RunWriter``: checkpoints, resume state, metrics.csv, TensorBoard) and the callbacks
that save and log after every epoch (``callbacks``).

Every random choice of an epoch (sampler order, augmentation, dropout) is seeded from
``(seed, epoch, rank)``, and state is written after each completed epoch, so a run interrupted
by a crash or Ctrl-C resumes at the next epoch and produces what the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from xraytriage.auc_means import training_mean_names
from xraytriage.data.base import RadiographDataset
from xraytriage.data.torch_dataset import UInt8Source
from xraytriage.errors import ConfigError
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.progress import progress_bar
from xraytriage.train.augment import BatchAugment
from xraytriage.train.callbacks import Callback, EpochRecord, default_callbacks
from xraytriage.train.config import TrainConfig
from xraytriage.train.data import TrainImages, batch_collate
from xraytriage.train.distill import build_soft_targets
from xraytriage.train.distributed import DistContext, resolve_device
from xraytriage.train.losses import build_loss, positive_fraction
from xraytriage.train.metrics import validation_metrics
from xraytriage.train.network import build_network, head_module, keep_frozen_norms_in_eval
from xraytriage.train.optim import Optimisation, build_optimizer, resolve_amp, use_channels_last
from xraytriage.train.samplers import EpochSampler, ShardSampler, sampling_strata
from xraytriage.train.tracker import BestEpochTracker
from xraytriage.train.writer import RESUME_STATE, RunWriter

__all__ = ["FitResult", "Trainer", "build_optimizer", "epoch_seed", "head_module", "seed_everything"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    output: Path
    label_names: list[str]
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]]
    val_probabilities: np.ndarray
    val_labels: np.ndarray
    images_per_s: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_checkpoint(self) -> Path:
        return self.output / "best.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


class Trainer:
    """Trains one network on ``train_set`` and validates on ``val_set`` (labels = network outputs).

    Construction builds everything (seeded, so every rank starts from the same weights);
    :meth:`fit` writes the run folder and runs the epochs.
    """

    def __init__(
        self,
        config: TrainConfig,
        train_set: RadiographDataset,
        val_set: RadiographDataset,
        output: str | Path,
        *,
        source: UInt8Source | None = None,
        val_source: UInt8Source | None = None,
        ctx: DistContext | None = None,
        resume: bool = False,
        name: str | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        if list(train_set.label_names) != list(val_set.label_names):
            raise ConfigError("training and validation sets have different labels")
        c = config
        self.config = c
        self.train_set, self.val_set = train_set, val_set
        self.label_names = list(train_set.label_names)
        self.output = Path(output)
        self.source = source
        self.val_source = val_source if val_source is not None else source
        self.ctx = ctx or DistContext()
        self.resume = resume
        self.name = name or c.name
        self.contract = c.preprocess
        self.model_cfg = c.model.resolve(len(self.label_names), self.contract.channels)
        self.device = resolve_device(c.device, self.ctx)
        self.amp_dtype = resolve_amp(c.amp, self.device)
        self.channels_last = use_channels_last(c.channels_last, self.amp_dtype)
        self.has_validation = len(val_set) > 0
        """False for a final model trained on every image (``data.val_fraction: 0``)."""
        self.writer = RunWriter(self.output, self.label_names)
        self.callbacks = default_callbacks() if callbacks is None else list(callbacks)

        seed_everything(c.seed)  # identical initial weights on every rank
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.net, self.params, self.init_note = build_network(
            c, self.model_cfg, self.label_names, self.device, self.channels_last
        )
        self.model = self._wrapped(self.net)
        """What the training step calls: the network, under DDP and/or ``torch.compile`` when asked."""
        self.train_loader, self.val_loader, self.sampler = self._loaders()
        steps = len(self.train_loader)
        if c.max_steps_per_epoch is not None:
            steps = min(steps, c.max_steps_per_epoch)
        self.optim = Optimisation(self.params, c, steps, c.early_stopping.maximize, self.amp_dtype)
        self.loss_fn = build_loss(c.loss, positive_fraction(train_set.labels)).to(self.device)
        self.soft_targets = build_soft_targets(c.distill, train_set, self.label_names)
        self.augment = BatchAugment(c.augment, c.seed) if c.augment.enabled else None
        self.tracker = BestEpochTracker(c.early_stopping, self.has_validation, self.label_names)
        self.epoch = 0
        """The next epoch to run (0-based); a resumed run starts after its last completed one."""
        self.history: list[dict[str, float]] = []
        self.speeds: list[float] = []

    # --- the run ---------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Run the epochs (from the last completed one with ``resume``); best.pt is the best epoch."""
        if self.ctx.is_main:
            self.writer.start(self.config)
        self.ctx.barrier()
        self._resume_or_refuse()
        self._emit("on_fit_start")
        try:
            while self.epoch < self.config.epochs and not self.tracker.stopped:
                self._emit("on_epoch_end", self._run_epoch())
                self.ctx.barrier()
                self.epoch += 1
            self._emit("on_fit_end")
        except KeyboardInterrupt:
            self._emit("on_interrupt")
            raise
        finally:
            self._emit("close")
        return self._finish()

    def _run_epoch(self) -> EpochRecord:
        """Train one epoch, validate, and record it (history, schedule, best epoch)."""
        c, epoch = self.config, self.epoch
        self.sampler.set_epoch(epoch)
        if self.augment is not None:
            self.augment.set_epoch(epoch, self.ctx.rank)
        torch.manual_seed(epoch_seed(c.seed, epoch, self.ctx.rank))
        lr = self.optim.lr
        t0 = time.perf_counter()
        train_loss, speed = self._train_epoch(epoch, self.train_loader)
        if self.has_validation:
            metrics, probs = self._validate(self.val_loader)
        else:
            keys = [*training_mean_names(self.label_names), *[f"auc/{n}" for n in self.label_names]]
            metrics, probs = {"val_loss": math.nan, **dict.fromkeys(keys, math.nan)}, None
        self.speeds.append(speed)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **metrics, "images_per_s": speed,
               "epoch_time_s": time.perf_counter() - t0}  # fmt: skip
        self.history.append(row)
        value = self.tracker.monitored(metrics)
        self.optim.end_epoch(value, metrics["val_loss"])
        improved = self.tracker.update(value, epoch + 1)
        return EpochRecord(epoch + 1, row, metrics, probs, improved)

    def _emit(self, event: str, *args: Any) -> None:
        if self.ctx.is_main:
            for callback in self.callbacks:
                getattr(callback, event)(self, *args)

    # --- set-up ----------------------------------------------------------------------------------
    def _wrapped(self, net: nn.Module) -> nn.Module:
        model = net
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if self.config.compile:
            model = torch.compile(model)
        return model

    def _loaders(self) -> tuple[DataLoader, DataLoader, EpochSampler]:
        c, ctx = self.config, self.ctx
        pin = c.pin_memory if c.pin_memory is not None else self.device.type == "cuda"
        strata = (
            sampling_strata(self.train_set, c.sampler.group_by)
            if c.sampler.name == "group_balanced"
            else None
        )
        sampler = EpochSampler(self.train_set.labels, c.sampler, c.seed, ctx.rank, ctx.world_size, strata)
        common = {"num_workers": c.workers, "pin_memory": pin, "collate_fn": batch_collate,
                  "persistent_workers": c.workers > 0}  # fmt: skip
        if c.workers > 0:
            common["prefetch_factor"] = 4
        train = DataLoader(
            TrainImages(self.train_set, self.contract, self.source),
            batch_size=c.batch_size,
            sampler=sampler,
            drop_last=len(sampler) > c.batch_size,
            **common,
        )
        val = DataLoader(
            TrainImages(self.val_set, self.contract, self.val_source),
            batch_size=c.eval_batch_size or c.batch_size * 2,
            sampler=ShardSampler(len(self.val_set), ctx.rank, ctx.world_size),
            **common,
        )
        return train, val, sampler

    # --- one epoch -------------------------------------------------------------------------------
    def _inputs(self, images: torch.Tensor, augment: BatchAugment | None) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        x = x.unsqueeze(1) if x.ndim == 3 else x
        x = x.float()
        if augment is not None:
            x = augment(x)
        x = self.contract.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _train_epoch(self, epoch: int, loader: DataLoader) -> tuple[float, float]:
        c = self.config
        self.model.train()
        if c.init.mode == "freeze_backbone":
            keep_frozen_norms_in_eval(self.net)
        total, count, images = 0.0, 0, 0
        steps = len(loader) if c.max_steps_per_epoch is None else min(len(loader), c.max_steps_per_epoch)
        bar = progress_bar(total=steps, desc=f"{self.name} {epoch + 1}/{c.epochs}", unit="batch", leave=False,
                   disable=not (c.progress and self.ctx.is_main))  # fmt: skip
        start = time.perf_counter()
        for step, (x_u8, y, index) in enumerate(loader):
            if step >= steps:
                break
            x = self._inputs(x_u8, self.augment)
            y = y.to(self.device, non_blocking=True)
            if self.soft_targets is not None:
                y = self.soft_targets.blend(y, index)
            with self._autocast():
                logits = self.model(x)
            loss = self.loss_fn(logits.float(), y)
            self.optim.step(loss)
            total += float(loss.detach()) * len(x)
            count += len(x)
            images += len(x)
            elapsed = time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(
                loss=f"{total / max(count, 1):.4f}",
                img_s=f"{images * self.ctx.world_size / max(elapsed, 1e-9):.0f}",
            )
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        sums = self.ctx.all_gather_object((total, count, images))
        total, count, images = (sum(s[i] for s in sums) for i in range(3))
        return total / max(count, 1), images / max(elapsed, 1e-9)

    @torch.no_grad()
    def predict_logits(self, loader: DataLoader) -> np.ndarray:
        """Logits for every row of the loader's dataset, in order, gathered from all ranks.
        Always float32, even when training in bf16: validation metrics, out-of-fold predictions
        (calibration's input) and a checkpoint's stored metrics are what the served model computes."""
        self.net.eval()
        parts_idx, parts_logits = [], []
        for x_u8, _, idx in loader:
            logits = self.net(self._inputs(x_u8, None))
            parts_idx.append(idx.numpy())
            parts_logits.append(logits.float().cpu().numpy())
        n_out = len(self.label_names)
        local = (
            np.concatenate(parts_idx) if parts_idx else np.zeros(0, np.int64),
            np.concatenate(parts_logits) if parts_logits else np.zeros((0, n_out), np.float32),
        )
        gathered = self.ctx.all_gather_object(local)
        index = np.concatenate([g[0] for g in gathered])
        logits = np.concatenate([g[1] for g in gathered])
        out = np.zeros((len(loader.dataset), n_out), np.float32)
        out[index] = logits
        return out

    def _validate(self, loader: DataLoader) -> tuple[dict[str, float], np.ndarray]:
        logits = self.predict_logits(loader)
        labels = self.val_set.labels
        loss = float(self.loss_fn(torch.from_numpy(logits), torch.from_numpy(labels)))
        probs = _sigmoid(logits)
        return validation_metrics(labels, probs, label_names=self.label_names, loss=loss), probs

    # --- persistence -----------------------------------------------------------------------------
    def checkpoint(self, metrics: dict[str, float], epoch: int, thresholds: dict[str, float]) -> Checkpoint:
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.net.state_dict().items()}
        return Checkpoint(
            model=self.model_cfg,
            label_names=self.label_names,
            preprocess=self.contract,
            state_dict=state,
            thresholds=thresholds,
            train_config=self.config.to_dict(),
            data_fingerprint=self.train_set.fingerprint(),
            training_images=[Path(p).name for p in self.train_set.table["path"]],
            metrics={
                "epoch": epoch,
                "split": "validation" if self.has_validation else "none (trained on every image)",
                "n_train": len(self.train_set),
                "n_val": len(self.val_set),
                "val_fingerprint": self.val_set.fingerprint(),
                **{k: float(v) for k, v in metrics.items()},
            },
            name=self.name,
        )

    def resume_state(self) -> dict[str, Any]:
        """What ``--resume`` needs after the current epoch (``last.state.pt``)."""
        return {
            "epoch": self.epoch + 1,
            **self.optim.state_dict(),
            "sampler": {"seed": self.config.seed, "next_epoch": self.epoch + 1},
            **self.tracker.state_dict(),
            "history": self.history,
            "label_names": self.label_names,
            "fingerprint": self.train_set.fingerprint(),
        }

    def _resume_or_refuse(self) -> None:
        """With ``resume``: continue the interrupted run in ``output``; without: never overwrite one."""
        if not self.resume:
            if self.writer.holds_run():
                raise ConfigError(
                    f"{self.output} already holds a run; pass --resume to continue it or choose another --output"
                )
            return
        restored = self.writer.read_resume_state(self.train_set.fingerprint(), self.model_cfg)
        if restored is None:
            log.warning(
                "%s: nothing to resume (no last.pt + %s); starting from epoch 1", self.output, RESUME_STATE
            )
            return
        state, last = restored
        self.net.load_state_dict({k: v.to(self.device) for k, v in last.state_dict.items()})
        self.optim.load_state_dict(state)
        self.tracker.load_state_dict(state)
        self.history = list(state["history"])
        self.epoch = int(state["epoch"])
        log.info("%s: resuming after epoch %d", self.output, self.epoch)

    def _finish(self) -> FitResult:
        best = self.writer.load_best()
        self.net.load_state_dict({k: v.float().to(self.device) if v.is_floating_point() else v
                                  for k, v in best.state_dict.items()})  # fmt: skip
        if self.has_validation:
            probs = _sigmoid(self.predict_logits(self.val_loader))
        else:
            probs = np.zeros((0, len(self.label_names)), np.float32)
        best_metrics = {
            k: v for k, v in best.metrics.items() if k == "val_loss" or k.startswith(("mean_auc", "auc/"))
        }
        result = FitResult(
            output=self.output,
            label_names=self.label_names,
            best_epoch=int(best.metrics.get("epoch", 0)),
            best_metrics=best_metrics,
            epochs_run=len(self.history),
            stopped_early=self.tracker.stopped,
            history=self.history,
            val_probabilities=probs,
            val_labels=self.val_set.labels,
            images_per_s=float(np.mean(self.speeds)) if self.speeds else math.nan,
        )
        if self.ctx.is_main:
            if self.has_validation:
                self.writer.write_predictions(self.val_set, probs)
            self.writer.write_summary({**summary_of(result, best), "world_size": self.ctx.world_size})
        self.ctx.barrier()
        return result


def summary_of(result: FitResult, best: Checkpoint) -> dict[str, Any]:
    return {
        "name": best.name,
        "labels": result.label_names,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best_metrics": result.best_metrics,
        "thresholds": best.thresholds,
        "n_train": best.metrics.get("n_train"),
        "n_val": best.metrics.get("n_val"),
        "data_fingerprint": best.data_fingerprint,
        "images_per_s": result.images_per_s,
        "best_checkpoint": str(result.output / "best.pt"),
        "last_checkpoint": str(result.output / "last.pt"),
    }
