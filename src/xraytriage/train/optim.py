"""Optimiser set-up of a run: optimiser, learning-rate schedule, mixed precision and the one
optimisation step, with the state that ``--resume`` restores."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xraytriage.errors import ConfigError
from xraytriage.train.config import OptimConfig, SchedulerConfig, TrainConfig


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


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX): there bf16 autocast trains
    about twice as fast as float32 (bench/bench_train.py); elsewhere bf16 is emulated and slower,
    so ``amp: auto`` stays in float32."""
    probes = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    try:
        if any(probe is not None and probe() for probe in probes):
            return True
    except RuntimeError:  # pragma: no cover - a torch build without the probes' backend
        pass
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device`` (None: float32). ``auto``: bf16 on a GPU that
    supports it and on a CPU with bf16 units (:func:`cpu_has_bf16`), else float32."""
    if amp == "none":
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp: fp16 needs a CUDA device; use bf16 or none")
        return torch.float16
    return torch.bfloat16


def use_channels_last(setting: bool | None, amp_dtype: torch.dtype | None) -> bool:
    """``channels_last: null`` (the default) turns it on with mixed precision, where it pays
    (oneDNN's bf16 and the GPU's tensor-core convolutions want NHWC; bench/bench_train.py)."""
    if setting is not None:
        return bool(setting)
    return amp_dtype is not None


class Optimisation:
    """Everything that changes the weights: optimiser, schedule (per batch or per epoch),
    gradient scaler (fp16 only) and gradient clipping."""

    def __init__(
        self,
        params: list[nn.Parameter],
        config: TrainConfig,
        steps_per_epoch: int,
        maximize: bool,
        amp_dtype: torch.dtype | None,
    ) -> None:
        self.params = params
        self.grad_clip = config.grad_clip
        self.plateau = config.scheduler.name == "plateau"
        self.optimizer = build_optimizer(params, config.optim)
        self.scheduler, self.per_step = build_scheduler(
            self.optimizer, config.scheduler, config.epochs, steps_per_epoch, maximize, config.optim.lr
        )
        self.scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor) -> None:
        """Backward pass and one optimiser step (and the schedule, when it is stepped per batch)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None and self.per_step:
            self.scheduler.step()

    def end_epoch(self, monitored: float, val_loss: float) -> None:
        """The per-epoch schedule step; plateau watches the monitored metric (else the loss)."""
        if self.scheduler is None or self.per_step:
            return
        if self.plateau:
            self.scheduler.step(monitored if math.isfinite(monitored) else val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
