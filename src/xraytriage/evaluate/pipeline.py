"""One evaluation from a predictions table to metrics.json / metrics.csv / PNGs / report.html.

Takes the predictions of the evaluation images (and optionally of separate validation images,
on which operating points are chosen), computes every metric of this package and writes them.
The CLI (``xraytriage evaluate``) is a thin layer over :func:`evaluate_predictions` and
:func:`write_evaluation`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.auc_means import mean_definitions
from xraytriage.errors import ConfigError
from xraytriage.evaluate.bootstrap import bootstrap_label_intervals
from xraytriage.evaluate.calibration import expected_calibration_error, reliability_table
from xraytriage.evaluate.cross_dataset import label_overlap
from xraytriage.evaluate.metrics import DEFAULT_THRESHOLDS, confusion, multilabel_metrics, threshold_metrics
from xraytriage.evaluate.operating_points import METHODS, choose_thresholds
from xraytriage.evaluate.predictions import (
    LABEL,
    PROB,
    evaluable_labels,
    label_matrix,
    prob_labels,
    prob_matrix,
    source_paths,
)
from xraytriage.evaluate.result import (  # noqa: F401 - SUMMARY_COLUMNS, mean_caption re-exported
    SUMMARY_COLUMNS,
    EvaluationResult,
    mean_caption,
    with_abnormal_columns,
)
from xraytriage.evaluate.study import AGGREGATIONS, aggregate_studies, evaluate_studies
from xraytriage.evaluate.triage_eval import triage_metrics
from xraytriage.sanitize import write_csv

log = logging.getLogger(__name__)

DEFAULT_CRITICAL = ("Pneumothorax",)
TRIAGE_SCORE = "triage (abnormal probability)"
"""The row name of the worklist's ordering score in grouped tables."""


@dataclass
class EvaluationConfig:
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    n_boot: int = 1000
    seed: int = 0
    operating_point: str = "youden"
    """Which rule's thresholds are "the" operating point (confusion matrices, study level)."""
    target_sensitivity: float = 0.9
    target_specificity: float = 0.9
    n_bins: int = 10
    group_by: str | None = None
    """Also report every label within groups (collection, view, sex, age-band) and audit them."""
    study_aggregations: tuple[str, ...] = AGGREGATIONS
    critical_labels: tuple[str, ...] = DEFAULT_CRITICAL
    simulate: bool = True
    day_minutes: float = 480.0
    reading_minutes: float | None = None
    """Default: chosen so that reading fills 90 % of the day."""
    reading_kind: str = "fixed"
    max_wait: float | None = 60.0


def _target(method: str, cfg: EvaluationConfig) -> float:
    return cfg.target_specificity if method == "specificity" else cfg.target_sensitivity


def _operating_points(
    test: pd.DataFrame,
    labels: list[str],
    val: pd.DataFrame | None,
    checkpoint_thresholds: Mapping[str, float] | None,
    cfg: EvaluationConfig,
) -> dict[str, Any]:
    """Thresholds per rule (chosen on ``val`` when given, else on the evaluation images and
    marked optimistic) and the evaluation metrics at each."""
    source_frame, source = (val, "validation") if val is not None else (test, "evaluation set (optimistic)")
    y_src, p_src = label_matrix(source_frame, labels), prob_matrix(source_frame, labels)
    rules: dict[str, dict[str, float]] = {
        m: choose_thresholds(y_src, p_src, label_names=labels, method=m, target=_target(m, cfg))
        for m in METHODS
    }
    if checkpoint_thresholds:
        rules["checkpoint"] = {n: float(checkpoint_thresholds.get(n, 0.5)) for n in labels}
    y, p = label_matrix(test, labels), prob_matrix(test, labels)
    out: dict[str, Any] = {
        "source": source,
        "target_sensitivity": cfg.target_sensitivity,
        "target_specificity": cfg.target_specificity,
        "rules": {},
    }
    for rule, thresholds in rules.items():
        out["rules"][rule] = {
            n: {
                **threshold_metrics(y[:, j], p[:, j], threshold=thresholds[n]),
                "confusion": confusion(y[:, j], p[:, j], threshold=thresholds[n]),
            }
            for j, n in enumerate(labels)
        }
    return out


def _study_level(
    test: pd.DataFrame, labels: list[str], thresholds: Mapping[str, float], cfg: EvaluationConfig
) -> dict[str, Any]:
    out = {}
    for n in labels:
        out[n] = evaluate_studies(test, PROB + n, LABEL + n, thresholds.get(n, 0.5), cfg.study_aggregations)
    return out


def _triage(test: pd.DataFrame, cfg: EvaluationConfig) -> dict[str, Any] | None:
    test = with_abnormal_columns(test)
    if not {"abnormal", "abnormal_probability"} <= set(test.columns):
        return None
    if "study_id" not in test.columns:  # without study ids every image is its own study
        test = test.assign(study_id=source_paths(test).to_numpy())
    critical_cols = [LABEL + c for c in cfg.critical_labels if LABEL + c in test.columns]
    frame = test.assign(critical=test[critical_cols].max(axis=1) if critical_cols else np.nan)
    studies = aggregate_studies(frame, ["abnormal_probability"], ["abnormal", "critical"], "max")
    known = studies["abnormal"].notna()
    if known.sum() < 2 or studies.loc[known, "abnormal"].nunique() < 2:
        return None
    studies = studies[known]
    n = len(studies)
    reading = cfg.reading_minutes or 0.9 * cfg.day_minutes / n
    critical = studies["critical"].to_numpy() if critical_cols else None
    result = triage_metrics(
        studies["abnormal"].to_numpy(),
        studies["abnormal_probability"].to_numpy(),
        critical=critical,
        day_minutes=cfg.day_minutes,
        reading_minutes=reading,
        reading_kind=cfg.reading_kind,
        max_wait=cfg.max_wait,
        seed=cfg.seed,
    )
    result["studies"] = n
    result["critical_labels"] = [c.removeprefix(LABEL) for c in critical_cols]
    result["priority"] = studies["abnormal_probability"].to_numpy()
    result["abnormal"] = studies["abnormal"].to_numpy()
    return result


def _grouped(test: pd.DataFrame, labels: list[str], by: str) -> dict[str, Any]:
    """Every label, and the triage score (abnormal probability vs abnormal truth), within the
    groups of ``by``, with the shortcut audit (:mod:`xraytriage.evaluate.grouped`)."""
    from xraytriage.evaluate.grouped import group_labels, grouped_metrics

    groups = group_labels(test, by)
    frame = with_abnormal_columns(test)
    names = list(labels)
    y, p = label_matrix(test, labels), prob_matrix(test, labels)
    if {"abnormal", "abnormal_probability"} <= set(frame.columns) and TRIAGE_SCORE not in names:
        y = np.column_stack([y, frame["abnormal"].to_numpy(dtype=np.float64)])
        p = np.column_stack([p, frame["abnormal_probability"].to_numpy(dtype=np.float64)])
        names.append(TRIAGE_SCORE)
    return grouped_metrics(y, p, labels=names, groups=groups, by=by)


def evaluate_predictions(
    test: pd.DataFrame,
    val: pd.DataFrame | None = None,
    config: EvaluationConfig | None = None,
    checkpoint_thresholds: Mapping[str, float] | None = None,
) -> EvaluationResult:
    """Every metric for a predictions table (see :mod:`xraytriage.evaluate.predictions`).

    Labels scored are those with both ``prob_`` and ``label_`` columns; the others are listed
    (cross-dataset: the model predicts labels the dataset does not annotate).
    """
    cfg = config or EvaluationConfig()
    labels = evaluable_labels(test)
    if not labels:
        raise ConfigError("no label has both predictions (prob_*) and ground truth (label_*)")
    y, p = label_matrix(test, labels), prob_matrix(test, labels)
    groups = test["patient_id"].astype(str).to_numpy() if "patient_id" in test.columns else None
    result = EvaluationResult({
        "images": len(test),
        "patients": int(test["patient_id"].nunique()) if "patient_id" in test.columns else None,
        "studies": int(test["study_id"].nunique()) if "study_id" in test.columns else None,
        "labels": labels,
        "label_overlap": label_overlap(
            prob_labels(test), [c.removeprefix(LABEL) for c in test.columns if c.startswith(LABEL)]
        ),
        "config": asdict(cfg),
    })  # fmt: skip
    result["metrics"] = multilabel_metrics(y, p, label_names=labels, thresholds=cfg.thresholds)
    definitions = mean_definitions(labels, outputs=prob_labels(test))
    log.info("bootstrap: %d patient-level replicates", cfg.n_boot)
    result["bootstrap"] = bootstrap_label_intervals(
        y, p, label_names=labels, groups=groups, n_boot=cfg.n_boot, seed=cfg.seed, means=definitions
    )
    result["means"] = named_means(result, definitions)
    result["operating_points"] = _operating_points(test, labels, val, checkpoint_thresholds, cfg)
    result["calibration"] = {
        n: {
            "ece": expected_calibration_error(y[:, j], p[:, j], n_bins=cfg.n_bins),
            "reliability": reliability_table(y[:, j], p[:, j], n_bins=cfg.n_bins).to_dict(orient="records"),
        }
        for j, n in enumerate(labels)
    }
    chosen = {n: v["threshold"] for n, v in result["operating_points"]["rules"][cfg.operating_point].items()}
    if "study_id" in test.columns and test["study_id"].duplicated().any():
        result["study_level"] = _study_level(test, labels, chosen, cfg)
    if cfg.group_by:
        result["grouped"] = _grouped(test, labels, cfg.group_by)
    if cfg.simulate:
        triage = _triage(test, cfg)
        if triage is not None:
            result["triage"] = triage
    return result


def named_means(result: Mapping[str, Any], definitions: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``{name: {labels, labels_with_auc, auc, low, high, average_precision}}`` for every named
    mean (:mod:`xraytriage.auc_means`), primary first, with its bootstrap CI."""
    out = {}
    for name, members in definitions.items():
        boot = result["bootstrap"]["means"][name]
        with_auc = [m for m in members if math.isfinite(result["metrics"]["labels"][m]["auc"])]
        out[name] = {
            "labels": list(members),
            "labels_with_auc": len(with_auc),
            "auc": boot["auc"]["estimate"],
            "low": boot["auc"]["low"],
            "high": boot["auc"]["high"],
            "average_precision": boot["average_precision"]["estimate"],
        }
    return out


def write_evaluation(
    result: Mapping[str, Any],
    output_dir: str | Path,
    test: pd.DataFrame,
    title: str = "xraytriage evaluation",
    run_dirs: Sequence[str | Path] = (),
    comparison: Mapping[str, Any] | None = None,
    localization_dirs: Sequence[str | Path] = (),
) -> dict[str, Path]:
    """Write metrics.json, metrics.csv, predictions.csv, the PNGs and report.html."""
    from xraytriage.evaluate.report import build_evaluation_report

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = result if isinstance(result, EvaluationResult) else EvaluationResult(result)
    if "triage" in result:
        write_csv(result["triage"]["simulation"]["table"], out / "triage_simulation.csv", index=False)
    if comparison is not None:
        write_csv(comparison["table"], out / "comparison.csv", index=False)
        if "grouped_triage" in comparison:
            write_csv(comparison["grouped_triage"]["table"], out / "grouped_comparison.csv", index=False)
    paths = {
        "metrics.json": out / "metrics.json",
        "metrics.csv": out / "metrics.csv",
        "predictions.csv": out / "predictions.csv",
    }
    if "grouped" in result:
        from xraytriage.evaluate.grouped import grouped_table

        paths["grouped_metrics.csv"] = out / "grouped_metrics.csv"
        write_csv(grouped_table(result["grouped"]), paths["grouped_metrics.csv"], index=False)
    paths["metrics.json"].write_text(json.dumps(result.to_json(comparison), indent=2), encoding="utf-8")
    write_csv(result.label_table(), paths["metrics.csv"], index=False)
    write_csv(test, paths["predictions.csv"], index=False)
    paths["report.html"] = build_evaluation_report(
        result, test, out, title, run_dirs, comparison, localization_dirs
    )
    return paths
