"""``xraytriage cv``: patient-grouped k-fold cross-validation.

One run per fold into ``RUN/fold-<k>`` (k = 1..K; each a normal training run with its own
checkpoints and metrics), then::

    RUN/oof_predictions.csv  every image once: path, patient_id, fold, <label>, prob_<label> ...
                             (the probability from the fold model that did not train on it)
    RUN/cv_epochs.csv        per epoch: mean and std over folds of every metric
    RUN/cv_summary.json      per metric (best epoch of each fold): mean, std, per-fold values;
                             and the pooled out-of-fold AUC per label

Folds are patient-disjoint and stratified by rarest finding (``data/splits.py``); they depend
only on the images and the split seed. The image decode (or cache) is shared by every fold.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.auc_means import primary_mean_name, training_mean_names, training_means
from xraytriage.data.splits import assert_patient_disjoint
from xraytriage.labels import NOT_DISEASE, abnormal_target
from xraytriage.models.checkpoint import abnormal_probability
from xraytriage.sanitize import write_csv, write_json
from xraytriage.stats import grouped_auc
from xraytriage.train.config import TrainConfig
from xraytriage.train.data import kfold
from xraytriage.train.distributed import init_distributed
from xraytriage.train.metrics import validation_metrics
from xraytriage.train.run import merged_metrics, prepare_data, train_networks
from xraytriage.train.trainer import FitResult

log = logging.getLogger(__name__)

OOF_GROUP_COLUMNS = ("collection", "view", "sex", "age")


def _fold_epochs(results: list[FitResult]) -> pd.DataFrame:
    """Per-epoch metrics of one fold; with several networks (binary relevance) their per-label
    AUCs are joined and losses averaged, and the named means are taken over every label."""
    frames = [pd.DataFrame(r.history).set_index("epoch") for r in results]
    if len(frames) == 1:
        return frames[0]
    aucs = pd.concat([f.filter(like="auc/") for f in frames], axis=1)
    out = pd.DataFrame(index=aucs.index)
    for key in ("train_loss", "val_loss", "lr"):
        out[key] = pd.concat([f[key] for f in frames], axis=1).mean(axis=1)
    means = pd.DataFrame(
        [training_means({c.removeprefix("auc/"): v for c, v in row.items()}) for _, row in aucs.iterrows()],
        index=aucs.index,
    )
    return out.join(means).join(aucs)


def _mean_std(values: list[float]) -> dict[str, Any]:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    ok = arr[~np.isnan(arr)]
    return {
        "mean": float(ok.mean()) if len(ok) else math.nan,
        "std": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan,
        "folds": arr.tolist(),
    }


def grouped_oof(dataset, oof: np.ndarray, group_by: str) -> dict[str, Any] | None:
    """Out-of-fold AUC within each group (e.g. collection) for the triage score and every
    finding, and their means: the honest numbers when groups differ in selection."""
    if group_by not in dataset.table.columns or dataset.table[group_by].nunique() < 2:
        return None
    groups = dataset.table[group_by].astype(str).to_numpy()
    names = list(dataset.label_names)
    truth = abnormal_target(dataset.labels, names)
    score = abnormal_probability(oof, names)
    findings = {
        n: grouped_auc(dataset.labels[:, j], oof[:, j], groups=groups)
        for j, n in enumerate(names)
        if n not in NOT_DISEASE
    }
    within = [r["within_mean_auc"] for r in findings.values() if r["within_mean_auc"] is not None]
    return {
        "by": group_by,
        "triage": grouped_auc(truth, score, groups=groups),
        "findings": findings,
        "mean_within_auc_findings": float(np.mean(within)) if within else math.nan,
        "findings_mean_name": primary_mean_name(list(findings)),
    }


def run_cv(
    config: TrainConfig,
    output: str | Path,
    folds: int = 5,
    resume: bool = False,
    group_by: str | None = "collection",
) -> dict[str, Any]:
    output = Path(output)
    ctx = init_distributed(config.device)
    try:
        data = prepare_data(config, ctx, allow_val_dataset=False)
        dataset = data.dataset
        splits = kfold(dataset, folds, config.effective_split_seed)
        fold_of = np.zeros(len(dataset), dtype=np.int64)
        for k, (_, val_idx) in enumerate(splits):
            fold_of[val_idx] = k + 1
        assert_patient_disjoint(fold_of, dataset.patient_ids)
        if ctx.is_main:
            output.mkdir(parents=True, exist_ok=True)
            config.save(output / "config.yaml")
        names = list(dataset.label_names)
        oof = np.full((len(dataset), len(names)), np.nan, dtype=np.float32)
        per_fold, epoch_frames = [], []
        for k, (train_idx, val_idx) in enumerate(splits):
            results = train_networks(
                config, dataset.subset(train_idx), dataset.subset(val_idx), output / f"fold-{k + 1}",
                source=data.source, ctx=ctx, resume=resume, name=f"{config.name}/fold-{k + 1}",
            )  # fmt: skip
            for r in results:
                cols = [names.index(n) for n in r.label_names]
                oof[np.ix_(val_idx, cols)] = r.val_probabilities
            per_fold.append(merged_metrics(results))
            epoch_frames.append(_fold_epochs(results).assign(fold=k + 1))
        summary = summarize(config, names, per_fold, epoch_frames, dataset.labels, oof, folds)
        if group_by:
            grouped = grouped_oof(dataset, oof, group_by)
            if grouped is not None:
                summary["grouped_oof"] = grouped
        if ctx.is_main:
            write_oof(output / "oof_predictions.csv", dataset, fold_of, oof)
            epochs = pd.concat([f.reset_index() for f in epoch_frames], ignore_index=True)
            write_csv(per_epoch(epochs), output / "cv_epochs.csv", index=False)
            write_json(output / "cv_summary.json", summary)
        return summary
    finally:
        ctx.close()


def summarize(
    config: TrainConfig,
    names: list[str],
    per_fold: list[dict[str, float]],
    epoch_frames: list[pd.DataFrame],
    labels: np.ndarray,
    oof: np.ndarray,
    folds: int,
) -> dict[str, Any]:
    keys = [*training_mean_names(names), "val_loss", *[f"auc/{n}" for n in names]]
    pooled = validation_metrics(labels, oof, label_names=names)
    return {
        "name": config.name,
        "folds": folds,
        "split_seed": config.effective_split_seed,
        "metrics": {key: _mean_std([m.get(key, math.nan) for m in per_fold]) for key in keys},
        "pooled_oof": {k: v for k, v in pooled.items() if k != "val_loss"},
        "epochs_run": [int(f.index.max()) for f in epoch_frames],
    }


def per_epoch(epochs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds, per epoch, of every metric column."""
    metric_cols = [c for c in epochs.columns if c not in ("epoch", "fold", "images_per_s", "epoch_time_s")]
    grouped = epochs.groupby("epoch")
    out = pd.DataFrame({"epoch": sorted(epochs["epoch"].unique())}).set_index("epoch")
    out["n_folds"] = grouped["fold"].nunique()
    for col in metric_cols:
        out[f"{col}_mean"] = grouped[col].mean()
        out[f"{col}_std"] = grouped[col].std(ddof=1)
    return out.reset_index()


def write_oof(path: Path, dataset, fold_of: np.ndarray, probs: np.ndarray) -> None:
    frame = pd.DataFrame({
        "path": dataset.table["path"], "patient_id": dataset.table["patient_id"], "fold": fold_of,
    })  # fmt: skip
    for col in OOF_GROUP_COLUMNS:  # so `evaluate --group-by` works on the OOF file alone
        if col in dataset.table.columns:
            frame[col] = dataset.table[col].to_numpy()
    for j, name in enumerate(dataset.label_names):
        frame[name] = dataset.labels[:, j]
        frame[f"prob_{name}"] = probs[:, j]
    write_csv(frame, path, index=False)


def format_cv(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['name']}: {summary['folds']}-fold patient-grouped CV (split seed {summary['split_seed']})"
    ]
    for key, stats in summary["metrics"].items():
        lines.append(f"  {key:<32} {stats['mean']:.4f} ± {stats['std']:.4f}")
    for key, value in summary["pooled_oof"].items():
        if key.startswith("mean_auc"):
            lines.append(f"  pooled out-of-fold {key:<21} {value:.4f}")
    grouped = summary.get("grouped_oof")
    if grouped:
        by, tri = grouped["by"], grouped["triage"]
        lines.append(f"within each {by} (out of fold; pooled numbers mix {by}s that differ in selection):")
        for name, g in tri["groups"].items():
            auc = "one class" if g["auc"] is None else f"{g['auc']:.4f}"
            lines.append(f"  triage AUC in {name:<24} {auc}  ({g['n']} images, {g['positives']} abnormal)")
        mean = tri["within_mean_auc"]
        lines.append(f"  triage AUC, mean within {by:<10} {mean:.4f}" if mean is not None else "")
        lines.append(
            f"  triage AUC, pooled                {tri['pooled_auc']:.4f}  ({by} alone: {tri['group_only_auc']:.4f})"
        )
        lines.append(
            f"  {grouped['findings_mean_name']}, mean within {by}: {grouped['mean_within_auc_findings']:.4f}"
        )
    return "\n".join(lines)
