"""Reading training run directories: the per-epoch metrics CSV and a per-label AUC summary.

``xraytriage train`` writes ``metrics.csv`` with one row per epoch (``epoch, lr, train_loss,
val_loss, mean_auc_14_findings, mean_auc_all_outputs, auc/<label>, ...``; runs written before
the naming rule of :mod:`xraytriage.auc_means` have one ``mean_auc``, the mean of every output);
``xraytriage cv`` writes ``cv_epochs.csv`` with the mean and std over folds
(``mean_auc_14_findings_mean``, ``auc/<label>_mean``, ...), read here as its means. The means
shown are recomputed from the per-label AUCs by the naming rule, so every run is summarised the
same way whatever version wrote it.
``auc_<label>`` spellings are accepted too. Only the AUC columns that exist are used, so runs
with different label sets can still be compared on the labels they share. A run that was evaluated
with ``xraytriage evaluate --output RUN/eval`` (a ``metrics.json`` in the run or below it) is
summarised by those test-set AUCs instead of the validation curve.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.auc_means import ALL_OUTPUTS, auc_means, findings, primary_mean_name
from xraytriage.errors import ConfigError

RUN_METRICS_FILES = ("metrics.csv", "cv_epochs.csv", "history.csv", "epochs.csv")
AUC_PREFIXES = ("auc/", "auc_", "val_auc/", "val_auc_")
MEAN_PREFIXES = ("mean_auc", "val_mean_auc")
"""Columns holding a mean over labels (``mean_auc_14_findings``..., the old ``mean_auc``)."""


def is_mean_column(column: str) -> bool:
    return column.startswith(MEAN_PREFIXES)


def find_run_metrics(run_dir: str | Path) -> Path | None:
    """The per-epoch metrics CSV of a run (``metrics.csv`` or similar; else any CSV in the run
    folder with an ``epoch`` column)."""
    run_dir = Path(run_dir)
    candidates = [run_dir / n for n in RUN_METRICS_FILES] + sorted(run_dir.glob("*.csv"))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            if "epoch" in pd.read_csv(path, nrows=0).columns:
                return path
        except (OSError, ValueError, pd.errors.ParserError):
            continue
    return None


def auc_columns(history: pd.DataFrame) -> list[str]:
    """Per-label AUC columns (``auc/<label>``, ``auc_<label>``...), then the mean AUC columns."""
    cols = [c for c in history.columns if c.startswith(AUC_PREFIXES)]
    return cols + [c for c in history.columns if is_mean_column(c)]


def label_columns(history: pd.DataFrame) -> list[str]:
    """The per-label AUC columns only."""
    return [c for c in auc_columns(history) if not is_mean_column(c)]


def primary_mean_column(history: pd.DataFrame) -> str | None:
    """The column of the primary mean (:func:`xraytriage.auc_means.primary_mean_name` of the
    run's labels); for an old run without it, its ``mean_auc``."""
    labels = [label_of(c) for c in label_columns(history)]
    if labels:
        primary = primary_mean_name(labels)
        for col in (primary, f"val_{primary}"):
            if col in history.columns:
                return col
    return next((c for c in auc_columns(history) if is_mean_column(c)), None)


def label_of(column: str) -> str:
    name = column.removeprefix("val_")
    for prefix in AUC_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def normalise_history(history: pd.DataFrame) -> pd.DataFrame:
    """A CV summary (``<metric>_mean`` / ``<metric>_std`` columns) -> its means under the plain
    metric names; a plain per-epoch table is returned unchanged."""
    means = [c for c in history.columns if c.endswith("_mean")]
    plain_mean = any(is_mean_column(c) and not c.endswith(("_mean", "_std")) for c in history.columns)
    if not means or plain_mean:
        return history
    renamed = history.rename(columns={c: c.removesuffix("_mean") for c in means})
    return renamed.drop(columns=[c for c in renamed.columns if c.endswith("_std")])


def read_history(run_dir: str | Path) -> pd.DataFrame:
    path = find_run_metrics(run_dir)
    if path is None:
        raise ConfigError(f"{run_dir}: no per-epoch metrics CSV (expected {' or '.join(RUN_METRICS_FILES)})")
    return normalise_history(pd.read_csv(path))


def best_epoch_row(history: pd.DataFrame) -> pd.Series:
    """The epoch with the best primary mean (:mod:`xraytriage.auc_means`), recomputed from the
    label AUCs when the run has them (so old runs are judged by the same mean), else the run's
    own mean column."""
    cols = label_columns(history)
    if cols:
        primary = primary_mean_name([label_of(c) for c in cols])
        score = history[cols].apply(lambda row: _row_means(row, cols)[primary], axis=1)
    else:
        mean_col = primary_mean_column(history)
        if mean_col is None:
            raise ConfigError("metrics CSV has no auc_* / mean_auc columns")
        score = history[mean_col]
    return history.loc[score.astype(float).fillna(-np.inf).idxmax()]


def _row_means(row: pd.Series, cols: list[str]) -> dict[str, float]:
    return auc_means({label_of(c): float(row[c]) for c in cols})


def find_evaluation(run_dir: str | Path) -> Path | None:
    """``metrics.json`` written by ``xraytriage evaluate`` in the run folder or one level below."""
    run_dir = Path(run_dir)
    for path in [run_dir / "metrics.json", *sorted(run_dir.glob("*/metrics.json"))]:
        if path.is_file():
            return path
    return None


RUN_PREDICTION_FILES = ("val_predictions.csv", "oof_predictions.csv")


def run_predictions(run_dir: str | Path) -> Path | None:
    """Per-image predictions of a run: an evaluation's ``predictions.csv`` (next to its
    ``metrics.json``), else training's ``val_predictions.csv`` or cross-validation's
    ``oof_predictions.csv``."""
    evaluation = find_evaluation(run_dir)
    if evaluation is not None and (evaluation.parent / "predictions.csv").is_file():
        return evaluation.parent / "predictions.csv"
    for name in RUN_PREDICTION_FILES:
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def run_label_aucs(run_dir: str | Path) -> tuple[dict[str, float], str]:
    """{label: AUC} of a run and where it came from (evaluation metrics.json, else the best
    epoch of the training metrics CSV)."""
    evaluation = find_evaluation(run_dir)
    if evaluation is not None:
        data = json.loads(evaluation.read_text(encoding="utf-8"))
        labels = data.get("metrics", {}).get("labels", {})
        aucs = {k: (np.nan if v.get("auc") is None else float(v["auc"])) for k, v in labels.items()}
        return {**aucs, **_means(aucs)}, f"evaluation {evaluation}"
    history = read_history(run_dir)
    row = best_epoch_row(history)
    cols = label_columns(history)
    aucs = {label_of(c): float(row[c]) for c in cols}
    if not aucs:  # only an old mean column: it averaged every output
        return {ALL_OUTPUTS: float(row[primary_mean_column(history)])}, "validation (mean only)"
    epoch = int(row["epoch"]) if "epoch" in row else int(row.name)
    return {**aucs, **_means(aucs)}, f"validation, best epoch {epoch}"


def _means(aucs: dict[str, float]) -> dict[str, float]:
    """The ``mean_auc_*`` means (a single label's AUC is already its own row)."""
    return {k: v for k, v in auc_means(aucs).items() if k.startswith("mean_auc")}


def comparison_table(
    run_dirs: Sequence[str | Path], names: Sequence[str] | None = None
) -> tuple[pd.DataFrame, dict]:
    """Rows labels (then the named means), columns runs; plus where each run's numbers came from."""
    names = list(names) if names else _unique_names(run_dirs)
    columns, sources = {}, {}
    for name, run in zip(names, run_dirs, strict=True):
        columns[name], sources[name] = run_label_aucs(run)
    table = pd.DataFrame(columns)
    is_mean = [str(i).startswith("mean_auc") for i in table.index]
    labels = [i for i, m in zip(table.index, is_mean, strict=True) if not m]
    in_every_run = [n for n in findings(labels) if table.loc[n].notna().all()]
    if len(in_every_run) > 1 and len(in_every_run) < len(findings(labels)):
        # runs with different labels: their means average different labels; this one does not
        name = f"mean_auc_{len(in_every_run)}_findings_in_every_run"
        table.loc[name] = table.loc[in_every_run].mean(axis=0)
        is_mean.append(True)
    order = [i for i, m in zip(table.index, is_mean, strict=True) if not m]
    order += [i for i, m in zip(table.index, is_mean, strict=True) if m]
    return table.loc[order], sources


def _unique_names(run_dirs: Sequence[str | Path]) -> list[str]:
    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(r).resolve().parent.name}/{Path(r).resolve().name}" for r in run_dirs]
