"""``report.html`` of an evaluation and of ``xraytriage compare``: the sections (header,
grouped metrics, discrimination, thresholds, operating points, calibration, study level, triage,
comparison, localisation, training runs) built from an evaluation result, with the figures of
:mod:`xraytriage.evaluate.plots` on the page of :mod:`xraytriage.evaluate.htmlpage`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.evaluate.clinical import (
    DEFINITIONS,
    HIGH_ECE,
    LOW_SENSITIVITY,
    plot_operating_points,
    summarise_findings,
)
from xraytriage.evaluate.htmlpage import MISSING, NOT_ENOUGH, HtmlReport
from xraytriage.evaluate.plots import (
    plot_auc_per_epoch,
    plot_calibration,
    plot_confusion_matrices,
    plot_pr_curves,
    plot_roc_curves,
    plot_run_comparison,
    plot_triage,
)
from xraytriage.sanitize import write_csv


def _auc_cell(m: Mapping[str, Any], value: float | None) -> Any:
    """An AUC/AP value, or why there is none."""
    if value is not None and np.isfinite(value):
        return value
    if m.get("positives", 0) == 0:
        return NOT_ENOUGH
    return "not enough negatives" if m.get("positives") == m.get("n") else MISSING


def _summary_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """The result's summary table (:meth:`EvaluationResult.summary_table`: named means first,
    then every label, then micro) with CIs as text and missing AUCs explained."""
    from xraytriage.evaluate.result import EvaluationResult

    summary = EvaluationResult(result).summary_table()
    labels = set(result["labels"])
    rows = []
    for name, r in summary.iterrows():
        is_label = name in labels
        m = result["metrics"]["labels"][name] if is_label else {}
        is_mean = not is_label and not str(name).startswith("micro")
        rows.append(
            {
                "label": name,
                "n": int(r["n"]) if is_label else "",
                "positives": int(r["positives"]) if is_label else "",
                "prevalence": r["prevalence"] if is_label else "",
                "AUC": _auc_cell(m, r["auc"]) if is_label else r["auc"],
                "AUC 95% CI": _ci({"low": r["auc_low"], "high": r["auc_high"]})
                if is_label or is_mean
                else "",
                "AP": _auc_cell(m, r["average_precision"]) if is_label else r["average_precision"],
                "AP 95% CI": _ci({"low": r["ap_low"], "high": r["ap_high"]}) if is_label or is_mean else "",
                "ECE": r["ece"] if is_label else "",
            }
        )
    return pd.DataFrame(rows).set_index("label")  # object columns: counts stay integers


def _ci(entry: Mapping[str, float]) -> str:
    low, high = entry.get("low"), entry.get("high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return MISSING
    return f"[{low:.3f}, {high:.3f}]"


def _threshold_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Every label at every fixed threshold; the 0.5 rows first."""
    rows = []
    for name, m in result["metrics"]["labels"].items():
        for t, at in m["at_threshold"].items():
            rows.append(
                {
                    "label": name,
                    "threshold": float(t),
                    **{k: at[k] for k in ("precision", "recall", "f1", "specificity")},
                }
            )
    frame = pd.DataFrame(rows)
    frame["_first"] = (frame["threshold"] - 0.5).abs() > 1e-9
    return frame.sort_values("_first", kind="stable").drop(columns="_first").set_index(["label", "threshold"])


def _operating_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Every rule's thresholds per label; the report's chosen rule first."""
    chosen = result["config"]["operating_point"]
    rules = result["operating_points"]["rules"]
    rows = []
    for rule in [chosen, *[r for r in rules if r != chosen]]:
        for name, at in rules[rule].items():
            rows.append(
                {
                    "rule": rule,
                    "label": name,
                    **{k: at[k] for k in ("threshold", "sensitivity", "specificity", "precision", "f1")},
                }
            )
    return pd.DataFrame(rows).set_index(["rule", "label"])


def _study_table(result: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for name, per_method in result["study_level"].items():
        for method, m in per_method.items():
            rows.append({"label": name, "aggregation": method, **m, "auc": _auc_cell(m, m["auc"])})
    return pd.DataFrame(rows).set_index(["label", "aggregation"])


def _wait_table(simulation: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for order in simulation["orders"]:
        for group, stats in simulation["waits"][order].items():
            if stats.get("n", 0):
                rows.append({"order": order, "studies": group, **stats})
    return pd.DataFrame(rows).set_index(["order", "studies"])


def _grouped_section(report: HtmlReport, grouped: Mapping[str, Any]) -> None:
    """Within-group AUCs in their own section: when images come from groups that differ in
    prevalence and appearance, the pooled numbers can rank the group instead of the disease."""
    by = grouped["by"]
    report.heading(f"Within each {by} (grouped metrics, shortcut audit)")
    report.paragraph(
        f"ROC AUC within each {by} that holds both classes, their unweighted mean, the pooled AUC "
        f"over all images, and how well the {by} alone predicts the label (each image scored by "
        f"its {by}'s prevalence; 0.5 = no information). A pooled AUC more than 0.05 above the "
        "within-group mean is confounded. Rows: the triage score first, then the labels with the "
        "largest pooled-minus-within gap."
    )
    for line in grouped["warnings"]:
        report.warning(line)
    if grouped["single_class_groups"]:
        report.paragraph(
            "Groups with a single class for at least one label (no AUC there): "
            + ", ".join(grouped["single_class_groups"])
        )
    groups = sorted({g for r in grouped["labels"].values() for g in r["groups"]}, key=str)
    sizes = {
        g: max(r["groups"][g]["n"] for r in grouped["labels"].values() if g in r["groups"]) for g in groups
    }

    def cell(v: dict | None) -> str:
        if v is None:
            return MISSING
        if v["auc"] is None:
            return f"one class ({v['positives']} pos.)"
        return f"{v['auc']:.3f} ({v['positives']} pos.)" + ("" if v.get("in_mean", True) else " few")

    def gap(item) -> float:
        label, r = item
        if label.startswith("triage"):
            return math.inf
        value = r.get("pooled_minus_within")
        return -math.inf if value is None else value

    rows = []
    for label, r in sorted(grouped["labels"].items(), key=gap, reverse=True):
        row: dict[str, Any] = {"label": label}
        for g in groups:
            row[f"{g} (n={sizes[g]})"] = cell(r["groups"].get(g))
        row[f"mean within {by}"] = (
            r["within_mean_auc"]
            if r["within_mean_auc"] is not None
            else f"no {by} with enough of both classes"
        )
        row["pooled"] = r["pooled_auc"] if r["pooled_auc"] is not None else NOT_ENOUGH
        row[f"{by} alone"] = r["group_only_auc"] if r["group_only_auc"] is not None else MISSING
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("label")
    report.table(frame, f"ROC AUC within each {by}")


def _header_items(result: Mapping[str, Any]) -> dict[str, Any]:
    """The header rows: what model, what data, when, which command."""
    prov = dict(result.get("provenance", {}))
    items: dict[str, Any] = {}
    if "model" in prov:
        items["model"] = prov["model"]
    if "model_version" in prov:
        items["model version"] = prov["model_version"]
    if "checkpoint" in prov:
        items["checkpoint"] = f"{prov['checkpoint']} (sha256 {prov['checkpoint_sha256']}…)"
    if "predictions" in prov:
        items["predictions"] = f"{prov['predictions']} (sha256 {prov['predictions_sha256']}…)"
    items["dataset"] = prov.get("dataset")
    if prov.get("sample"):
        items["sample"] = prov["sample"]
    items["images"] = result["images"]
    items["patients"] = (
        result.get("patients")
        if result.get("patients") is not None
        else "not recorded (each image its own patient)"
    )
    if result.get("studies") is not None:
        items["studies"] = result["studies"]
    items["data fingerprint"] = prov.get("data_fingerprint")
    if prov.get("training_data_fingerprint"):
        items["training data fingerprint"] = prov["training_data_fingerprint"]
    overlap = result.get("training_overlap")
    if overlap is not None:
        if not overlap.get("checked"):
            items["seen in training"] = f"unknown ({overlap.get('reason')})"
        else:
            text = (
                f"{overlap['overlapping']} of {overlap['evaluated_images']} images ({overlap['share']:.1%})"
            )
            if overlap.get("excluded"):
                text += f"; {overlap['excluded']} training images excluded (--exclude-training-images)"
            items["seen in training"] = text
    items["groups"] = prov.get("groups") or "none (--group-by not given)"
    items["scored labels"] = ", ".join(result["labels"])
    items["confidence intervals"] = (
        f"95%, {result['bootstrap']['n_boot']} {result['bootstrap']['resampling']}-level bootstrap "
        f"replicates (seed {result['bootstrap']['seed']})"
    )
    items["date"] = prov.get("date")
    items["command"] = prov.get("command")
    return items


def _clinical_section(report: HtmlReport, result: Mapping[str, Any], y: np.ndarray, p: np.ndarray) -> None:
    """The first section: per finding, at the thresholds the model runs with, sensitivity,
    specificity and flag rate with 95% CIs, in words and one picture, warnings first."""
    labels = list(result["labels"])
    ops = result["operating_points"]
    rule = "checkpoint" if "checkpoint" in ops["rules"] else result["config"]["operating_point"]
    thresholds = {n: ops["rules"][rule][n]["threshold"] for n in labels}
    ece = {n: result.get("calibration", {}).get(n, {}).get("ece") for n in labels}
    summaries = summarise_findings(y, p, labels=labels, thresholds=thresholds, ece=ece)
    report.heading("Summary for a clinical lead: what the model does at its operating points")
    where = (
        "the thresholds stored in the model, the ones `triage` and the service flag with"
        if rule == "checkpoint"
        else f"thresholds of the {rule} rule, chosen on the {ops['source']} (no model thresholds were given)"
    )
    report.paragraph(
        f"The model flags a finding when its probability reaches the finding's threshold; here {where}. "
        f"Measured on {result['images']} images of this data set. The model is a triage aid: it changes "
        "the order of reading, never whether a study is read."
    )
    report.paragraph("What the numbers mean. " + DEFINITIONS)
    for s in summaries:
        for text in s.warnings:
            report.warning(text)
    rows = [
        {
            "finding": s.label,
            "threshold": s.threshold,
            "sensitivity": s.sensitivity.value,
            "sensitivity 95% CI": _rate_ci(s.sensitivity),
            "specificity": s.specificity.value,
            "specificity 95% CI": _rate_ci(s.specificity),
            "flag rate": s.flag_rate.value,
            "flag rate 95% CI": _rate_ci(s.flag_rate),
            "ECE": s.ece,
            "warning": "; ".join(
                text
                for text, on in (
                    (
                        f"sensitivity below {LOW_SENSITIVITY:g}",
                        s.sensitivity.n and s.sensitivity.value < LOW_SENSITIVITY,
                    ),
                    (f"ECE above {HIGH_ECE:g}", s.ece is not None and s.ece > HIGH_ECE),
                )
                if on
            ),
        }
        for s in summaries
    ]
    report.table(pd.DataFrame(rows).set_index("finding"), "Per finding at its threshold", digits=2)
    report.figure(
        plot_operating_points(summaries, "Per finding at its threshold: sensitivity, specificity, flag rate"),
        "clinical_summary",
        "Dots: the measured share; bars: its 95% CI; dotted line: sensitivity 0.3, below which the report warns.",
    )
    for s in summaries:
        report.paragraph(s.sentence())


def _rate_ci(rate) -> str:
    return MISSING if not rate.n else f"[{rate.low:.2f}, {rate.high:.2f}]"


def _wait_explained(report: HtmlReport, sim: Mapping[str, Any]) -> None:
    """What the wait table says, in words, and a measured maximum-wait bound (aging) for the
    triage order."""
    from xraytriage.evaluate.triage_eval import simulate_queue

    waits = sim["waits"]
    report.paragraph(
        "How to read the table: each row is one reading order and one group of studies; the columns "
        "are minutes from a study's arrival to the start of its reading (n studies; mean; median; p95 = "
        "95 of 100 studies waited less; max = the longest wait)."
    )
    fifo, triage = waits.get("fifo", {}).get("abnormal", {}), waits.get("triage", {}).get("abnormal", {})
    if fifo.get("n") and triage.get("n"):
        report.paragraph(
            f"Abnormal studies wait {triage['mean']:.1f} min on average under triage against "
            f"{fifo['mean']:.1f} min first come, first served, but their longest wait is {triage['max']:.1f} "
            f"against {fifo['max']:.1f} min: the abnormal studies the model scores low (its misses) "
            "are read late, after every higher-scored study. An escalation limit bounds that wait."
        )
    escalated = [o for o in sim["orders"] if o.startswith("triage+escalation")]
    if escalated and waits[escalated[0]] == waits.get("triage"):
        longest = max(v["max"] for v in waits["triage"].values() if v.get("n"))
        report.paragraph(
            f"The {escalated[0]} rows equal the triage rows because escalation never triggered: no study "
            f"waited {sim['max_wait']:g} minutes (the longest wait under triage was {longest:.1f} min)."
        )
    table = sim.get("table")
    if table is None or not len(table) or not fifo.get("n"):
        return
    arrival, reading = table["arrival"].to_numpy(), table["reading"].to_numpy()
    priority, abnormal = table["priority"].to_numpy(), table["abnormal"].to_numpy() == 1
    rows = []
    for bound in sorted({round(fifo["max"] * f, 1) for f in (0.5, 1.0)} - {0.0}):
        run = simulate_queue(arrival, reading, priority, "triage", max_wait=bound)
        rows.append(
            {
                "maximum wait before a study is read next (min)": bound,
                "abnormal: mean wait": float(run.wait[abnormal].mean()),
                "abnormal: max wait": float(run.wait[abnormal].max()),
                "all: max wait": float(run.wait.max()),
            }
        )
    rows.insert(
        0,
        {
            "maximum wait before a study is read next (min)": "none (triage)",
            "abnormal: mean wait": triage["mean"],
            "abnormal: max wait": triage["max"],
            "all: max wait": waits["triage"]["all"]["max"],
        },
    )
    bounded = [r for r in rows[1:] if r["abnormal: mean wait"] <= fifo["mean"]]
    if bounded:
        best = min(bounded, key=lambda r: (r["abnormal: max wait"], r["abnormal: mean wait"]))
        report.paragraph(
            f"Measured here: reading any study that has waited {best['maximum wait before a study is read next (min)']:g} "
            f"min next keeps the abnormal studies' mean wait at {best['abnormal: mean wait']:.1f} min ("
            f"{triage['mean']:.1f} with plain triage, {fifo['mean']:.1f} first come, first served) and caps "
            f"their longest wait at {best['abnormal: max wait']:.1f} min ({triage['max']:.1f} with plain triage): "
            "for this data, triage with that bound is the better default (simulate another bound with "
            "`evaluate --max-wait`; the web worklist itself is sorted by priority only)."
        )
    report.table(
        pd.DataFrame(rows).set_index("maximum wait before a study is read next (min)"),
        "Triage with aging, measured in the same simulated day",
        digits=1,
        note="Aging: a study that has waited the bound is read next. Bounds at half and at all of the "
        "longest first-come-first-served wait of an abnormal study; the one that keeps the triage mean "
        "and caps the maximum is the better default for this data.",
    )


def _triage_section(report: HtmlReport, tri: Mapping[str, Any]) -> None:
    report.heading("Triage")
    reference = tri.get("abnormal_found_in_top_reference", {})
    best, random = reference.get("best_possible", {}), reference.get("random_order", {})
    rows = [
        {
            "first part of the worklist": f"{float(k):.0%}",
            "abnormal studies found (this model)": f"{v:.1%}" if np.isfinite(v) else MISSING,
            "best possible order": f"{best[k]:.1%}" if k in best and np.isfinite(best[k]) else MISSING,
            "random order": f"{random[k]:.1%}" if k in random and np.isfinite(random[k]) else MISSING,
        }
        for k, v in tri["abnormal_found_in_top"].items()
    ]
    report.paragraph(
        f"Priority AUC (abnormal vs normal, {tri['studies']} studies): {tri['priority_auc']:.3f}. "
        "Share of all abnormal studies found in the first part of a worklist sorted by P(abnormal), "
        "next to the best possible order (every abnormal study first) and random order."
    )
    report.table(pd.DataFrame(rows).set_index("first part of the worklist"))
    sim = tri["simulation"]
    escalation = (
        f", and by priority with any study that has waited {sim['max_wait']:g} minutes read next (escalation)"
        if sim["max_wait"] is not None
        else ""
    )
    report.paragraph(
        f"Reading-queue simulation: the {sim['studies']} studies arrive at random times over one "
        f"{sim['day_minutes']:g}-minute day and one radiologist reads them one at a time "
        f"({sim['reading_kind']} reading time, mean {sim['reading_minutes']:.2f} min, "
        f"{sim['utilisation']:.0%} of the day busy; seed {sim['seed']}) in arrival order (FIFO), by "
        f"priority (triage){escalation}; the table gives waiting times in minutes."
    )
    report.table(_wait_table(sim))
    _wait_explained(report, sim)


def build_evaluation_report(
    result: Mapping[str, Any],
    predictions: pd.DataFrame,
    output_dir: str | Path,
    title: str = "xraytriage evaluation",
    run_dirs: Sequence[str | Path] = (),
    comparison: Mapping[str, Any] | None = None,
    localization_dirs: Sequence[str | Path] = (),
) -> Path:
    """Every figure as PNG in ``output_dir`` and ``report.html`` embedding them; the tables of
    ``xraytriage localize-eval`` output folders (``localization.csv``) when given."""
    from xraytriage.evaluate.predictions import label_matrix, prob_matrix
    from xraytriage.evaluate.provenance import overlap_warning
    from xraytriage.evaluate.run_folders import comparison_table, read_history

    labels = list(result["labels"])
    y, p = label_matrix(predictions, labels), prob_matrix(predictions, labels)
    report = HtmlReport(output_dir, title)
    warning = overlap_warning(result.get("training_overlap") or {})
    if warning:
        report.warning(warning)
    if "operating_points" in result:
        _clinical_section(report, result, y, p)
    report.heading("What was evaluated")
    report.header(_header_items(result))
    overlap = result.get("label_overlap", {})
    if overlap.get("model_only"):
        report.paragraph(
            "Predicted but not annotated in this dataset (not scored): " + ", ".join(overlap["model_only"])
        )
    if overlap.get("dataset_only"):
        report.paragraph("Annotated but not predicted by the model: " + ", ".join(overlap["dataset_only"]))
    if "grouped" in result:
        _grouped_section(report, result["grouped"])
    report.heading("Discrimination")
    means = result.get("means", {})
    if means:
        report.paragraph(
            "Means are named by what they average: "
            + "; ".join(
                f"{name} = {', '.join(e['labels'])}"
                for name, e in means.items()
                if name.startswith("mean_auc")
            )
            + "."
        )
    report.paragraph(
        "AUC (area under the ROC curve): the chance that a randomly chosen image with the finding scores "
        "above a randomly chosen image without it (0.5 = a coin toss, 1 = always). AP (average "
        "precision): precision (the share of flagged images that have the finding) averaged over all "
        "sensitivities; a random model's AP equals the prevalence, so read it against that column. "
        "ECE: see the summary at the top."
    )
    report.table(_summary_table(result), "Per label")
    report.figure(
        plot_roc_curves(y, p, names=labels), "roc_curves", "ROC curve per label (one colour per label)"
    )
    report.figure(plot_pr_curves(y, p, names=labels), "pr_curves", "Precision-recall curve per label")
    report.heading("Fixed thresholds")
    report.table(
        _threshold_table(result), preview=len(labels), note="At 0.5 first; the other thresholds below."
    )
    report.heading("Operating points")
    ops = result["operating_points"]
    chosen = result["config"]["operating_point"]
    report.paragraph(
        f"Thresholds chosen on: {ops['source']}; sensitivity target {ops['target_sensitivity']:g}, "
        f"specificity target {ops['target_specificity']:g}. The report's rule ({chosen}) first."
    )
    report.table(_operating_table(result), preview=len(labels))
    matrices = {
        n: {"threshold": at["threshold"], "matrix": at["confusion"]} for n, at in ops["rules"][chosen].items()
    }
    report.figure(plot_confusion_matrices(matrices, f"Confusion matrices ({chosen})"), "confusion_matrices")
    report.heading("Calibration")
    report.figure(
        plot_calibration(y, p, names=labels, n_bins=result["config"]["n_bins"]),
        "calibration",
        "Reliability diagram",
    )
    if "study_level" in result:
        report.heading("Study level")
        report.table(_study_table(result), "Image probabilities aggregated per study")
    if "triage" in result:
        tri = result["triage"]
        _triage_section(report, tri)
        report.figure(
            plot_triage(tri["abnormal"], tri["priority"], simulation=tri["simulation"]),
            "triage_simulation",
            "Triage: worklist gain with its reference orders, and waiting times per reading order",
        )
    if comparison is not None:
        report.heading("Side by side with another model")
        report.paragraph(f"{comparison['images']} images present in both prediction sets.")
        report.table(
            comparison["table"].set_index("label"),
            "AUC difference: DeLong test and paired bootstrap",
            digits=4,
        )
        if "grouped_triage" in comparison:
            grouped = comparison["grouped_triage"]
            means_within = ", ".join(
                f"{name} {value:.3f}" for name, value in grouped["mean_within"].items() if value is not None
            )
            report.paragraph(
                f"Triage score within each {grouped['by']} (ours: abnormal probability; theirs: "
                f"{grouped['their_score']}). Mean of the within-{grouped['by']} AUCs: {means_within}."
            )
            report.table(
                grouped["table"].set_index("group"), f"Triage AUC within each {grouped['by']}", digits=4
            )
    if localization_dirs:
        report.heading("Localisation")
        report.paragraph(
            "Wang et al. (2017) protocol: accuracy at T(IoBB) and T(IoU), pointing game and false positives "
            "per image, with patient-level bootstrap 95% CIs, per method (Grad-CAM, the box-supervised "
            "localiser); each method's rows (source model) next to its random same-size control (source random: "
            "its own boxes moved to random places)."
        )
        for folder in localization_dirs:
            table_path = Path(folder) / "localization.csv"
            if not table_path.is_file():
                report.paragraph(f"{table_path}: not found (run `xraytriage localize-eval` first)")
                continue
            report.table(pd.read_csv(table_path), str(folder))
    if run_dirs:
        report.heading("Training runs")
        for run in run_dirs:
            try:
                history = read_history(run)
            except Exception as exc:  # one unreadable run must not stop the report
                report.paragraph(f"{run}: {exc}")
                continue
            report.figure(
                plot_auc_per_epoch(history, f"{Path(run).name}: validation AUC"),
                f"auc_per_epoch_{Path(run).name}",
            )
        if len(run_dirs) > 1:
            table, _ = comparison_table(run_dirs)
            report.table(table, "AUC per label and run")
            report.figure(plot_run_comparison(table), "run_comparison")
    return report.write()


def _run_header(
    run_dirs: Sequence[str | Path], names: Sequence[str], sources: Mapping[str, str]
) -> pd.DataFrame:
    """Per run: where its numbers come from, its model (name, checkpoint hash) and data."""
    from xraytriage.evaluate.provenance import file_sha256
    from xraytriage.evaluate.run_folders import find_evaluation

    rows = []
    for name, run in zip(names, run_dirs, strict=True):
        row: dict[str, Any] = {"run": name, "folder": str(run), "numbers from": sources.get(name)}
        evaluation = find_evaluation(run)
        prov = {}
        if evaluation is not None:
            prov = json.loads(evaluation.read_text(encoding="utf-8")).get("provenance", {})
        checkpoint = Path(run) / "best.pt"
        row["model"] = prov.get("model")
        if prov.get("checkpoint_sha256"):
            row["checkpoint sha256"] = prov["checkpoint_sha256"]
        elif checkpoint.is_file():
            row["checkpoint sha256"] = file_sha256(checkpoint)
        row["dataset"] = prov.get("dataset")
        row["images"] = prov.get("images")
        row["data fingerprint"] = prov.get("data_fingerprint")
        rows.append(row)
    return pd.DataFrame(rows).set_index("run")


def build_runs_report(
    run_dirs: Sequence[str | Path],
    output_dir: str | Path,
    title: str = "xraytriage run comparison",
    n_boot: int = 1000,
    seed: int = 0,
    command: Sequence[str] | None = None,
) -> Path:
    """``xraytriage compare``: the labels x runs AUC table, its heat map, every run's AUC curves
    and, for runs with predictions on shared images (see ``run_folders.run_predictions``), DeLong /
    paired-bootstrap tests of each run against the first on the images they share."""
    import datetime as _dt
    import shlex

    from xraytriage.evaluate.compare import compare_predictions
    from xraytriage.evaluate.predictions import read_predictions_csv
    from xraytriage.evaluate.run_folders import (
        comparison_table,
        find_run_metrics,
        read_history,
        run_predictions,
    )

    table, sources = comparison_table(run_dirs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(table, out / "comparison.csv", index_label="label")
    report = HtmlReport(out, title)
    report.header(
        {
            "runs": len(run_dirs),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(command) if command else None,
        }
    )
    report.table(_run_header(run_dirs, list(table.columns), sources), "What is compared")
    report.table(
        table,
        "AUC per label (rows) and run (columns)",
        note="Means named by what they average (xraytriage.auc_means), recomputed from each run's label AUCs. "
        "A dash: the run has no AUC for that label.",
    )
    report.figure(plot_run_comparison(table), "run_comparison", "AUC per label and run")
    for name, run in zip(table.columns, run_dirs, strict=True):
        if find_run_metrics(run) is not None:
            report.figure(
                plot_auc_per_epoch(read_history(run), f"{name}: validation AUC"),
                f"auc_per_epoch_{_safe(name)}",
                f"{name}: validation AUC per epoch, one colour per label, the named means in black/grey",
            )
    predictions = {}
    for name, run in zip(table.columns, run_dirs, strict=True):
        path = run_predictions(run)
        if path is not None:
            predictions[name] = read_predictions_csv(path)
    names = list(predictions)
    for other in names[1:]:
        try:
            result = compare_predictions(
                predictions[names[0]], predictions[other], n_boot, seed, names=(names[0], other)
            )
        except Exception as exc:  # runs on different images or labels: say so, keep the report
            report.paragraph(f"{names[0]} vs {other}: not compared ({exc})")
            continue
        write_csv(result["table"], out / f"delong_{_safe(names[0])}_vs_{_safe(other)}.csv", index=False)
        report.table(
            result["table"].set_index("label"),
            f"{names[0]} vs {other} on {result['images']} shared images (DeLong, paired bootstrap)",
            digits=4,
        )
    return report.write()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
