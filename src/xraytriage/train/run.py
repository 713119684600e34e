"""``xraytriage train``: config -> dataset -> task -> patient-grouped split -> trained network(s)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xraytriage.auc_means import training_mean_names, training_means
from xraytriage.data.base import RadiographDataset
from xraytriage.data.torch_dataset import UInt8Source
from xraytriage.errors import ConfigError
from xraytriage.sanitize import write_json
from xraytriage.train.config import TrainConfig
from xraytriage.train.data import image_source, load_source, train_val_indices
from xraytriage.train.distributed import DistContext, init_distributed
from xraytriage.train.tasks import jobs, task_dataset
from xraytriage.train.trainer import FitResult, Trainer

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    dataset: RadiographDataset
    """All images of the task (train + val, or everything for CV), labels = network outputs."""
    source: UInt8Source | None
    val_dataset: RadiographDataset | None = None
    val_source: UInt8Source | None = None


def _images(dataset: RadiographDataset, config: TrainConfig, ctx: DistContext):
    """Image source for ``dataset``; under DDP rank 0 alone extends the cache, the rest wait."""
    spec = config.data
    progress = config.progress and ctx.is_main
    if spec.cache and ctx.enabled and not ctx.is_main:
        ctx.barrier()
    result = image_source(dataset, config.preprocess, spec.cache, spec.preload, config.workers, progress,
                          build_cache=spec.build_cache and ctx.is_main)  # fmt: skip
    if spec.cache and ctx.enabled and ctx.is_main:
        ctx.barrier()
    return result


def prepare_data(
    config: TrainConfig, ctx: DistContext | None = None, allow_val_dataset: bool = True
) -> PreparedData:
    """Load, restrict to the task's labels, and make the images fast to read (cache or memory)."""
    spec, ctx = config.data, ctx or DistContext()
    dataset = task_dataset(load_source(spec.kind, spec.options), spec)
    source, dataset = _images(dataset, config, ctx)
    if spec.val_kind is None:
        return PreparedData(dataset, source)
    if not allow_val_dataset:
        raise ConfigError("cross-validation makes its own validation folds: remove data.val_kind")
    val = task_dataset(load_source(spec.val_kind, spec.val_options), spec).select_labels(dataset.label_names)
    val_source, val = _images(val, config, ctx)
    return PreparedData(dataset, source, val, val_source)


def train_networks(
    config: TrainConfig,
    train_set: RadiographDataset,
    val_set: RadiographDataset,
    output: Path,
    *,
    source: UInt8Source | None,
    val_source: UInt8Source | None = None,
    ctx: DistContext | None = None,
    resume: bool = False,
    name: str | None = None,
) -> list[FitResult]:
    """Every network of the task (one, or one per label for binary relevance) on this split."""
    results = []
    for job in jobs(train_set, config.data):
        names = list(job.label_names)
        tr = train_set if names == train_set.label_names else train_set.select_labels(names)
        va = val_set if names == val_set.label_names else val_set.select_labels(names)
        job_name = name or config.name
        if job.subdir:
            job_name = f"{job_name}/{job.subdir}"
        trainer = Trainer(config, tr, va, output / job.subdir, source=source, val_source=val_source, ctx=ctx,
                          resume=resume, name=job_name)  # fmt: skip
        results.append(trainer.fit())
    return results


def merged_metrics(results: list[FitResult]) -> dict[str, float]:
    """Best validation metrics of all networks of one split; the named means over every label."""
    merged: dict[str, float] = {}
    losses = []
    for r in results:
        merged.update({k: v for k, v in r.best_metrics.items() if k.startswith("auc/")})
        losses.append(r.best_metrics.get("val_loss", math.nan))
    means = training_means({k.removeprefix("auc/"): v for k, v in merged.items()})
    return {"val_loss": float(np.nanmean(losses)) if losses else math.nan, **means, **merged}


def run_training(config: TrainConfig, output: str | Path, resume: bool = False) -> list[FitResult]:
    """Train the configured task into ``output``; under ``torchrun`` every rank calls this."""
    output = Path(output)
    ctx = init_distributed(config.device)
    try:
        data = prepare_data(config, ctx)
        if data.val_dataset is None and config.data.val_fraction == 0:
            # Final model on every image: no validation, the last epoch is kept; thresholds and
            # calibration come from cross-validation (`xraytriage calibrate --predictions oof.csv`).
            train_set, val_set = data.dataset, data.dataset.subset([])
        elif data.val_dataset is None:
            train_idx, val_idx = train_val_indices(
                data.dataset, config.data.val_fraction, config.effective_split_seed
            )
            train_set, val_set = data.dataset.subset(train_idx), data.dataset.subset(val_idx)
        else:
            train_set, val_set = data.dataset, data.val_dataset
        if ctx.is_main:
            output.mkdir(parents=True, exist_ok=True)
            config.save(output / "config.yaml")
        results = train_networks(config, train_set, val_set, output, source=data.source, val_source=data.val_source,
                                 ctx=ctx, resume=resume)  # fmt: skip
        if ctx.is_main and len(results) > 1:
            write_json(output / "summary.json", {
                "name": config.name,
                "task": config.data.task,
                "best_metrics": merged_metrics(results),
                "networks": {r.label_names[0]: str(r.best_checkpoint) for r in results},
                "best_epochs": {r.label_names[0]: r.best_epoch for r in results},
            })  # fmt: skip
        return results
    finally:
        ctx.close()


def _means_text(result: FitResult) -> str:
    """``mean_auc_14_findings 0.7012, mean_auc_all_outputs 0.7213``: every mean by its name."""
    names = training_mean_names(result.label_names)
    return "".join(f", {n} {result.best_metrics.get(n, math.nan):.4f}" for n in names)


def format_results(results: list[FitResult]) -> str:
    """A short table: one line per label with validation AUC and the Youden threshold."""
    lines = []
    for r in results:
        lines.append(
            f"{r.output}: best epoch {r.best_epoch} of {r.epochs_run}"
            f"{' (early stop)' if r.stopped_early else ''}{_means_text(r)}, "
            f"{r.images_per_s:.0f} img/s"
        )
        for name in r.label_names:
            lines.append(f"  {name:<28} AUC {r.best_metrics.get(f'auc/{name}', math.nan):.4f}")
    return "\n".join(lines)
