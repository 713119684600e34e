"""The training loop for one network: epochs, validation, checkpoints, early stopping, resume.

A job directory ends up holding::

    config.yaml          resolved config (loads back with ``xraytriage train``)
    metrics.csv          one row per epoch: lr, train_loss, val_loss, the named AUC means
                         (mean_auc_14_findings, mean_auc_all_outputs; xraytriage.auc_means),
                         auc/<label>, images/s
    tensorboard/         the same curves for TensorBoard
    best.pt, last.pt     servable xraytriage checkpoints (config, labels, preprocessing contract,
                         data fingerprint, validation metrics, Youden thresholds)
    last.state.pt        optimizer / scheduler / scaler / sampler state for ``--resume`` only
    val_predictions.csv  the best model's validation probabilities (path, patient_id, label, prob)
    summary.json         best epoch and metrics, epochs run, speed

Every random choice of an epoch (sampler order, augmentation, dropout) is seeded from
``(seed, epoch, rank)``, and state is written after each completed epoch, so a run interrupted
by a crash or Ctrl-C resumes at the next epoch and produces what the uninterrupted run would have.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from xraytriage.auc_means import resolve_monitor, training_mean_names
from xraytriage.data.base import RadiographDataset
from xraytriage.data.torch_dataset import UInt8Source
from xraytriage.errors import ConfigError
from xraytriage.models.checkpoint import Checkpoint, load_checkpoint
from xraytriage.models.factory import ModelConfig, build_model
from xraytriage.preprocess import PreprocessContract
from xraytriage.train.augment import BatchAugment
from xraytriage.train.config import OptimConfig, SchedulerConfig, TrainConfig
from xraytriage.train.data import TrainImages, batch_collate
from xraytriage.train.distributed import DistContext, resolve_device
from xraytriage.train.losses import build_loss, positive_fraction
from xraytriage.train.metrics import is_better, validation_metrics, youden_thresholds
from xraytriage.train.samplers import EpochSampler, ShardSampler, sampling_strata

log = logging.getLogger(__name__)

RESUME_STATE = "last.state.pt"


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


# --- building blocks -----------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31)


def head_module(net: nn.Module) -> tuple[str, nn.Linear]:
    """The classification layer: the network's last ``nn.Linear`` (true for every backbone here)."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ConfigError(f"{type(net).__name__}: no linear classification layer found")
    return last


def init_from_checkpoint(
    net: nn.Module,
    model_cfg: ModelConfig,
    label_names: list[str],
    path: str,
    contract: PreprocessContract | None = None,
) -> str:
    """Load a checkpoint's weights into ``net``. Same labels: everything. Other labels: the
    backbone, plus the head rows of the labels both share; the rest of the head starts fresh."""
    ckpt = load_checkpoint(path)
    if contract is not None and ckpt.preprocess.to_dict() != contract.to_dict():
        log.warning(
            "init.checkpoint %s was trained with preprocessing %s; this run uses %s (set preprocess to match "
            "unless the change is intended)",
            path,
            ckpt.preprocess.to_dict(),
            contract.to_dict(),
        )
    theirs = ckpt.model
    for key in ("backbone", "in_channels", "width"):
        if getattr(theirs, key) != getattr(model_cfg, key):
            raise ConfigError(
                f"init.checkpoint {path}: model.{key} is {getattr(theirs, key)!r} there but "
                f"{getattr(model_cfg, key)!r} in this config"
            )
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    if list(ckpt.label_names) == list(label_names):
        net.load_state_dict(state)
        return f"all weights from {path}"
    head_name, head = head_module(net)
    prefix = f"{head_name}."
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    missing, unexpected = net.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise ConfigError(
            f"init.checkpoint {path}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    shared = [n for n in label_names if n in ckpt.label_names]
    with torch.no_grad():
        for name in shared:
            i, j = ckpt.label_names.index(name), label_names.index(name)
            head.weight[j] = state[f"{prefix}weight"][i]
            if head.bias is not None and f"{prefix}bias" in state:
                head.bias[j] = state[f"{prefix}bias"][i]
    return f"backbone from {path}; head rows reused for {len(shared)} of {len(label_names)} labels"


def freeze_backbone(net: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the head; returns the parameters left to train."""
    _, head = head_module(net)
    head_params = {id(p) for p in head.parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in head_params)
    return [p for p in net.parameters() if p.requires_grad]


def keep_frozen_norms_in_eval(net: nn.Module) -> None:
    """Batch-norm layers whose weights are frozen also keep their running statistics."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def build_optimizer(params: list[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: SchedulerConfig,
    epochs: int,
    steps_per_epoch: int,
    maximize: bool,
    lr: float,
) -> tuple[Any, bool]:
    """(scheduler or None, stepped every batch?)."""
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), False
    if cfg.name == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma), False
    if cfg.name == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if maximize else "min",
            factor=cfg.factor,
            patience=cfg.patience,
            min_lr=cfg.min_lr,
        )
        return sched, False
    if cfg.name == "cosine":
        total = max(1, epochs * steps_per_epoch)
        warm = round(cfg.warmup_epochs * steps_per_epoch)
        floor = min(1.0, cfg.min_lr / lr)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
    return None, False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "none":
        return None
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp: fp16 needs a CUDA device; use bf16 or none")
        return torch.float16
    return torch.bfloat16


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_json_safe(data), indent=2) + "\n")


# --- the trainer ---------------------------------------------------------------------------------
class Trainer:
    """Trains one network on ``train_set`` and validates on ``val_set`` (labels = network outputs)."""

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
    ) -> None:
        if list(train_set.label_names) != list(val_set.label_names):
            raise ConfigError("training and validation sets have different labels")
        self.config = config
        self.train_set, self.val_set = train_set, val_set
        self.label_names = list(train_set.label_names)
        self.output = Path(output)
        self.source = source
        self.val_source = val_source if val_source is not None else source
        self.ctx = ctx or DistContext()
        self.resume = resume
        self.name = name or config.name
        self.contract = config.preprocess
        self.model_cfg = config.model.resolve(len(self.label_names), self.contract.channels)
        self.device = resolve_device(config.device, self.ctx)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.maximize = config.early_stopping.maximize
        self.has_validation = len(val_set) > 0
        """False for a final model trained on every image (``data.val_fraction: 0``)."""

    # --- setup ---------------------------------------------------------------------------------
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

    def _build_network(self) -> tuple[nn.Module, list[nn.Parameter], str]:
        c = self.config
        net = build_model(self.model_cfg)
        note = "random initialisation"
        if c.init.checkpoint:
            note = init_from_checkpoint(
                net, self.model_cfg, self.label_names, c.init.checkpoint, self.contract
            )
        params = [p for p in net.parameters() if p.requires_grad]
        if c.init.mode == "freeze_backbone":
            params = freeze_backbone(net)
            note += "; backbone frozen, training the head only"
        net = net.to(self.device)
        if c.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net, params, note

    # --- one epoch -------------------------------------------------------------------------------
    def _inputs(self, images: torch.Tensor, augment: BatchAugment | None) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        x = x.unsqueeze(1) if x.ndim == 3 else x
        x = x.float()
        if augment is not None:
            x = augment(x)
        x = self.contract.normalize(x)
        if self.config.channels_last:
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
        bar = tqdm(total=steps, desc=f"{self.name} {epoch + 1}/{c.epochs}", unit="batch", leave=False,
                   disable=not (c.progress and self.ctx.is_main))  # fmt: skip
        start = time.perf_counter()
        for step, (x_u8, y, _) in enumerate(loader):
            if step >= steps:
                break
            x = self._inputs(x_u8, self.augment)
            y = y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(x)
            loss = self.loss_fn(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if c.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.scheduler is not None and self.per_step:
                self.scheduler.step()
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
        """Logits for every row of the loader's dataset, in order, gathered from all ranks."""
        self.net.eval()
        parts_idx, parts_logits = [], []
        for x_u8, _, idx in loader:
            with self._autocast():
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
        probs = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
        return validation_metrics(labels, probs, self.label_names, loss), probs

    # --- persistence -----------------------------------------------------------------------------
    def _checkpoint(self, metrics: dict[str, float], epoch: int, thresholds: dict[str, float]) -> Checkpoint:
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

    def _write_metrics_csv(self) -> None:
        columns = ["epoch", "lr", "train_loss", "val_loss", *training_mean_names(self.label_names),
                   *[f"auc/{n}" for n in self.label_names], "images_per_s", "epoch_time_s"]  # fmt: skip
        with open(self.output / "metrics.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in self.history:
                writer.writerow(
                    {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                )

    def _save_state(self, epoch: int, stopped: bool) -> None:
        state = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": {"seed": self.config.seed, "next_epoch": epoch},
            "best": {"value": self.best_value, "epoch": self.best_epoch},
            "bad_epochs": self.bad_epochs,
            "stopped": stopped,
            "history": self.history,
            "label_names": self.label_names,
            "fingerprint": self.train_set.fingerprint(),
        }
        tmp = self.output / (RESUME_STATE + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.output / RESUME_STATE)

    def _load_state(self) -> dict[str, Any] | None:
        path, last = self.output / RESUME_STATE, self.output / "last.pt"
        if not (path.is_file() and last.is_file()):
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if list(state["label_names"]) != self.label_names:
            raise ConfigError(
                f"{self.output}: cannot resume, the run was trained on labels {state['label_names']}"
            )
        if state["fingerprint"] != self.train_set.fingerprint():
            raise ConfigError(
                f"{self.output}: cannot resume, the training data differ from the interrupted run's"
            )
        ckpt = load_checkpoint(last)
        if ckpt.model != self.model_cfg:
            raise ConfigError(f"{self.output}: cannot resume, the run's model was {ckpt.model}")
        self.net.load_state_dict({k: v.to(self.device) for k, v in ckpt.state_dict.items()})
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.best_value, self.best_epoch = state["best"]["value"], state["best"]["epoch"]
        self.bad_epochs = int(state["bad_epochs"])
        self.history = list(state["history"])
        return state

    # --- the run ---------------------------------------------------------------------------------
    def fit(self) -> FitResult:
        c, ctx = self.config, self.ctx
        if ctx.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            c.save(self.output / "config.yaml")
        ctx.barrier()
        seed_everything(c.seed)  # identical initial weights on every rank
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.net, self.params, init_note = self._build_network()
        self.model: nn.Module = self.net
        if ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        if c.compile:
            self.model = torch.compile(self.model)
        train_loader, val_loader, sampler = self._loaders()
        steps = (
            len(train_loader)
            if c.max_steps_per_epoch is None
            else min(len(train_loader), c.max_steps_per_epoch)
        )
        self.optimizer = build_optimizer(self.params, c.optim)
        self.scheduler, self.per_step = build_scheduler(
            self.optimizer, c.scheduler, c.epochs, steps, self.maximize, c.optim.lr
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loss_fn = build_loss(c.loss, positive_fraction(self.train_set.labels)).to(self.device)
        self.augment = BatchAugment(c.augment, c.seed) if c.augment.enabled else None
        self.history: list[dict[str, float]] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        start_epoch, stopped = 0, False
        if self.resume:
            state = self._load_state()
            if state is None:
                log.warning(
                    "%s: nothing to resume (no last.pt + %s); starting from epoch 1",
                    self.output,
                    RESUME_STATE,
                )
            else:
                start_epoch, stopped = int(state["epoch"]), bool(state["stopped"])
                log.info("%s: resuming after epoch %d", self.output, start_epoch)
        elif (self.output / "last.pt").exists():
            raise ConfigError(
                f"{self.output} already holds a run; pass --resume to continue it or choose another --output"
            )
        if ctx.is_main:
            log.info("%s: %d train / %d val images, %d labels, %s on %s (%s)", self.name, len(self.train_set),
                     len(self.val_set), len(self.label_names), self.model_cfg.backbone, self.device, init_note)  # fmt: skip
        writer = None
        if ctx.is_main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.output / "tensorboard"), purge_step=start_epoch + 1)
        speeds = []
        try:
            epoch = start_epoch
            while epoch < c.epochs and not stopped:
                sampler.set_epoch(epoch)
                if self.augment is not None:
                    self.augment.set_epoch(epoch, ctx.rank)
                torch.manual_seed(epoch_seed(c.seed, epoch, ctx.rank))
                lr = self.optimizer.param_groups[0]["lr"]
                t0 = time.perf_counter()
                train_loss, speed = self._train_epoch(epoch, train_loader)
                if self.has_validation:
                    metrics, probs = self._validate(val_loader)
                else:
                    keys = [*training_mean_names(self.label_names), *[f"auc/{n}" for n in self.label_names]]
                    metrics, probs = {"val_loss": math.nan, **dict.fromkeys(keys, math.nan)}, None
                speeds.append(speed)
                row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **metrics, "images_per_s": speed,
                       "epoch_time_s": time.perf_counter() - t0}  # fmt: skip
                self.history.append(row)
                monitor = resolve_monitor(c.early_stopping.metric, self.label_names)
                value = metrics.get(monitor)
                if value is None:
                    raise ConfigError(
                        f"early_stopping.metric {c.early_stopping.metric!r} is not one of {sorted(metrics)}"
                    )
                if self.scheduler is not None and not self.per_step:
                    if c.scheduler.name == "plateau":
                        self.scheduler.step(value if math.isfinite(value) else metrics["val_loss"])
                    else:
                        self.scheduler.step()
                keep_last = c.early_stopping.keep_last or not self.has_validation
                improved = (
                    keep_last
                    or self.best_epoch is None
                    or is_better(value, self.best_value, self.maximize, c.early_stopping.min_delta)
                )
                if improved:
                    self.best_value, self.best_epoch, self.bad_epochs = value, epoch + 1, 0
                else:
                    self.bad_epochs += 1
                stopped = (
                    self.has_validation
                    and c.early_stopping.patience is not None
                    and self.bad_epochs >= c.early_stopping.patience
                )
                if ctx.is_main:
                    thresholds = (
                        youden_thresholds(self.val_set.labels, probs, self.label_names)
                        if probs is not None
                        else {}
                    )
                    ckpt = self._checkpoint(metrics, epoch + 1, thresholds)
                    if improved:
                        ckpt.save(self.output / "best.pt", half=c.save_half)
                    ckpt.save(self.output / "last.pt", half=c.save_half)
                    self._save_state(epoch + 1, stopped)
                    self._write_metrics_csv()
                    for key, v in row.items():
                        if key != "epoch" and isinstance(v, float) and math.isfinite(v):
                            writer.add_scalar(key if "/" in key else f"epoch/{key}", v, epoch + 1)
                    writer.flush()
                    log.info("%s epoch %d/%d: train_loss %.4f val_loss %.4f %s %.4f lr %.2e %.0f img/s%s",
                             self.name, epoch + 1, c.epochs, train_loss, metrics["val_loss"], monitor, value, lr,
                             speed, " *" if improved else "")  # fmt: skip
                ctx.barrier()
                epoch += 1
            if stopped and ctx.is_main:
                log.info(
                    "%s: early stopping after epoch %d (best epoch %s)",
                    self.name,
                    len(self.history),
                    self.best_epoch,
                )
        except KeyboardInterrupt:
            if ctx.is_main:
                log.warning(
                    "%s: interrupted; completed epochs are saved, continue with --resume", self.output
                )
            raise
        finally:
            if writer is not None:
                writer.close()
        return self._finish(val_loader, stopped, speeds)

    def _finish(self, val_loader: DataLoader, stopped: bool, speeds: list[float]) -> FitResult:
        best = load_checkpoint(self.output / "best.pt")
        self.net.load_state_dict({k: v.float().to(self.device) if v.is_floating_point() else v
                                  for k, v in best.state_dict.items()})  # fmt: skip
        if self.has_validation:
            probs = 1.0 / (1.0 + np.exp(-np.clip(self.predict_logits(val_loader), -60, 60)))
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
            stopped_early=stopped,
            history=self.history,
            val_probabilities=probs,
            val_labels=self.val_set.labels,
            images_per_s=float(np.mean(speeds)) if speeds else math.nan,
        )
        if self.ctx.is_main:
            if self.has_validation:
                self._write_predictions(probs)
            write_json(
                self.output / "summary.json", {**summary_of(result, best), "world_size": self.ctx.world_size}
            )
        self.ctx.barrier()
        return result

    def _write_predictions(self, probs: np.ndarray) -> None:
        table = self.val_set.table
        frame = pd.DataFrame({"path": table["path"], "patient_id": table["patient_id"]})
        for j, name in enumerate(self.label_names):
            frame[name] = self.val_set.labels[:, j]
            frame[f"prob_{name}"] = probs[:, j]
        frame.to_csv(self.output / "val_predictions.csv", index=False)


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
