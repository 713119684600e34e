"""Reading training run directories: the per-epoch metrics CSV and a per-label AUC summary.

``xraytriage train`` writes ``metrics.csv`` with one row per epoch (``epoch, lr, train_loss,
val_loss, mean_auc, auc/<label>, ...``); ``xraytriage cv`` writes ``cv_epochs.csv`` with the
mean and std over folds (``mean_auc_mean``, ``auc/<label>_mean``, ...), read here as its means.
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

from xraytriage.errors import ConfigError

RUN_METRICS_FILES = ("metrics.csv", "cv_epochs.csv", "history.csv", "epochs.csv")
AUC_PREFIXES = ("auc/", "auc_", "val_auc/", "val_auc_")
MEAN_COLUMNS = ("mean_auc", "val_mean_auc")


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
    """Per-label AUC columns (``auc/<label>``, ``auc_<label>``...), then the mean AUC column."""
    cols = [c for c in history.columns if c.startswith(AUC_PREFIXES)]
    return cols + [c for c in MEAN_COLUMNS if c in history.columns]


def label_of(column: str) -> str:
    name = column.removeprefix("val_")
    for prefix in AUC_PREFIXES:
        name = name.removeprefix(prefix)
    return name


def normalise_history(history: pd.DataFrame) -> pd.DataFrame:
    """A CV summary (``<metric>_mean`` / ``<metric>_std`` columns) -> its means under the plain
    metric names; a plain per-epoch table is returned unchanged."""
    means = [c for c in history.columns if c.endswith("_mean")]
    if not means or "mean_auc" in history.columns:
        return history
    renamed = history.rename(columns={c: c.removesuffix("_mean") for c in means})
    return renamed.drop(columns=[c for c in renamed.columns if c.endswith("_std")])


def read_history(run_dir: str | Path) -> pd.DataFrame:
    path = find_run_metrics(run_dir)
    if path is None:
        raise ConfigError(f"{run_dir}: no per-epoch metrics CSV (expected {' or '.join(RUN_METRICS_FILES)})")
    return normalise_history(pd.read_csv(path))


def best_epoch_row(history: pd.DataFrame) -> pd.Series:
    """The epoch with the best mean AUC (mean of the label AUCs when no mean column)."""
    cols = auc_columns(history)
    if not cols:
        raise ConfigError("metrics CSV has no auc_* / mean_auc columns")
    mean_col = next((c for c in MEAN_COLUMNS if c in history.columns), None)
    score = (
        history[mean_col] if mean_col else history[[c for c in cols if c not in MEAN_COLUMNS]].mean(axis=1)
    )
    return history.loc[score.fillna(-np.inf).idxmax()]


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
        macro = data.get("metrics", {}).get("macro", {}).get("auc")
        aucs["mean"] = np.nan if macro is None else float(macro)
        return aucs, f"evaluation {evaluation}"
    history = read_history(run_dir)
    row = best_epoch_row(history)
    aucs = {label_of(c): float(row[c]) for c in auc_columns(history) if c not in MEAN_COLUMNS}
    mean_col = next((c for c in MEAN_COLUMNS if c in history.columns), None)
    aucs["mean"] = float(row[mean_col]) if mean_col else float(np.nanmean(list(aucs.values())))
    epoch = int(row["epoch"]) if "epoch" in row else int(row.name)
    return aucs, f"validation, best epoch {epoch}"


def comparison_table(
    run_dirs: Sequence[str | Path], names: Sequence[str] | None = None
) -> tuple[pd.DataFrame, dict]:
    """Rows labels (then ``mean``), columns runs; plus where each run's numbers came from."""
    names = list(names) if names else _unique_names(run_dirs)
    columns, sources = {}, {}
    for name, run in zip(names, run_dirs, strict=True):
        columns[name], sources[name] = run_label_aucs(run)
    table = pd.DataFrame(columns)
    order = [i for i in table.index if i != "mean"] + (["mean"] if "mean" in table.index else [])
    return table.loc[order], sources


def _unique_names(run_dirs: Sequence[str | Path]) -> list[str]:
    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(r).resolve().parent.name}/{Path(r).resolve().name}" for r in run_dirs]
