"""The result of one evaluation and the frame helper its users share, below them all.

:mod:`pipeline` builds an :class:`EvaluationResult`, :mod:`report` renders one and :mod:`compare`
fills the abnormal columns the same way; keeping both here makes those imports point one way
(no pipeline <-> report <-> compare circle, issue #27). :mod:`pipeline` re-exports every name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from xraytriage.auc_means import auc_means
from xraytriage.evaluate.predictions import (
    LABEL,
    abnormal_truth,
    label_matrix,
    prob_labels,
    prob_matrix,
)
from xraytriage.models.checkpoint import abnormal_probability
from xraytriage.sanitize import json_clean


def with_abnormal_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill ``abnormal_probability`` / ``abnormal`` when predictions lack them (e.g. training's
    out-of-fold CSV): P(abnormal) by the checkpoint's default rule (Abnormal label, else
    1 - No Finding, else noisy-OR of the findings), truth from the label columns."""
    frame = frame.copy()
    names = prob_labels(frame)
    if "abnormal_probability" not in frame.columns and names:
        frame["abnormal_probability"] = abnormal_probability(prob_matrix(frame, names), names)
    truth = [c.removeprefix(LABEL) for c in frame.columns if c.startswith(LABEL)]
    if "abnormal" not in frame.columns and truth:
        frame["abnormal"] = abnormal_truth(label_matrix(frame, truth), truth)
    return frame


def mean_caption(name: str, entry: Mapping[str, Any]) -> str:
    """``mean_auc_14_findings`` or ``mean_auc_14_findings (13 of 14 with both classes)``."""
    k, n = entry["labels_with_auc"], len(entry["labels"])
    return name if k == n else f"{name} ({k} of {n} with both classes)"


SUMMARY_COLUMNS = (
    "n", "positives", "prevalence", "auc", "auc_low", "auc_high",
    "average_precision", "ap_low", "ap_high", "ece",
)  # fmt: skip
"""The headline columns of :meth:`EvaluationResult.label_table` (console and report)."""


class EvaluationResult(dict):
    """Everything one evaluation measured, as :func:`evaluate_predictions` returns it.

    A dict (keys ``images``, ``labels``, ``metrics``, ``bootstrap``, ``means``,
    ``operating_points``, ``calibration``, ``triage``...), so code that indexes it keeps working;
    on top, its one per-label table (:meth:`label_table`: metrics.csv, and through
    :meth:`summary_table` the console and the report) and its JSON form (:meth:`to_json`).
    """

    def label_table(self) -> pd.DataFrame:
        """One row per label, then the named means, macro and micro: every flat number."""
        rows = []
        boot = self["bootstrap"]["labels"]
        ops = self["operating_points"]["rules"]
        for name, m in self["metrics"]["labels"].items():
            row: dict[str, Any] = {
                "label": name,
                "n": m["n"],
                "positives": m["positives"],
                "prevalence": m["prevalence"],
                "auc": m["auc"],
                "auc_low": boot[name]["auc"]["low"],
                "auc_high": boot[name]["auc"]["high"],
                "average_precision": m["average_precision"],
                "ap_low": boot[name]["average_precision"]["low"],
                "ap_high": boot[name]["average_precision"]["high"],
                "ece": self["calibration"][name]["ece"],
            }
            for t, at in m["at_threshold"].items():
                for k in ("precision", "recall", "f1", "specificity"):
                    row[f"{k}@{t}"] = at[k]
            for rule, per_label in ops.items():
                row[f"threshold_{rule}"] = per_label[name]["threshold"]
                row[f"sensitivity_{rule}"] = per_label[name]["sensitivity"]
                row[f"specificity_{rule}"] = per_label[name]["specificity"]
            rows.append(row)
        for name, entry in self.get("means", {}).items():
            if not name.startswith("mean_auc"):
                continue  # single-label AUCs are already rows
            rows.append(
                {
                    "label": f"({name})",
                    "n_labels": len(entry["labels"]),
                    "auc": entry["auc"],
                    "auc_low": entry["low"],
                    "auc_high": entry["high"],
                    "average_precision": entry["average_precision"],
                }
            )
        for avg in ("macro", "micro"):
            summary = self["metrics"][avg]
            n_labels = len(self["labels"])
            row = {
                "label": f"(macro over {n_labels} labels)"
                if avg == "macro"
                else f"(micro, {n_labels} labels pooled)",
                "n_labels": n_labels,
                "auc": summary["auc"],
                "average_precision": summary["average_precision"],
            }
            if avg == "macro":
                row["auc_low"] = self["bootstrap"]["macro"]["auc"]["low"]
                row["auc_high"] = self["bootstrap"]["macro"]["auc"]["high"]
            for key, v in summary.items():
                if "@" in key:
                    row[key] = v
            rows.append(row)
        return pd.DataFrame(rows)

    def summary_table(self) -> pd.DataFrame:
        """The headline view of :meth:`label_table`: named means first (captioned with how many
        of their labels had an AUC), then every label, then micro; :data:`SUMMARY_COLUMNS`."""
        table = self.label_table().set_index("label")
        means = [i for i in table.index if i.startswith("(mean_auc")]
        micro = [i for i in table.index if i.startswith("(micro")]
        out = table.loc[[*means, *self["labels"], *micro], list(SUMMARY_COLUMNS)]
        out.index = [
            mean_caption(i[1:-1], self["means"][i[1:-1]]) if i in means else i.strip("()") for i in out.index
        ]
        out.index.name = "label"
        return out

    def to_json(self, comparison: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """JSON-safe dict of metrics.json (NaN as None; the triage simulation's per-study table
        and the comparison's joined frame left out: they go to CSV files)."""
        out = {k: v for k, v in self.items() if k != "triage"}
        if "triage" in self:
            tri = self["triage"]
            out["triage"] = {
                "studies": tri["studies"],
                "priority_auc": tri["priority_auc"],
                "abnormal_found_in_top": tri["abnormal_found_in_top"],
                "abnormal_found_in_top_reference": tri["abnormal_found_in_top_reference"],
                "critical_labels": tri["critical_labels"],
                "simulation": {k: v for k, v in tri["simulation"].items() if k != "table"},
            }
        if comparison is not None:
            out["comparison"] = {
                "images": comparison["images"],
                "labels": comparison["labels"],
                "table": comparison["table"].to_dict(orient="records"),
                "macro_auc": {name: comparison[name]["macro"]["auc"] for name in comparison["names"]},
                "means": {
                    name: auc_means({k: v["auc"] for k, v in comparison[name]["labels"].items()})
                    for name in comparison["names"]
                },
            }
            if "grouped_triage" in comparison:
                grouped = comparison["grouped_triage"]
                out["comparison"]["grouped_triage"] = {
                    "by": grouped["by"],
                    "names": grouped["names"],
                    "table": grouped["table"].to_dict(orient="records"),
                    "mean_within": grouped["mean_within"],
                    "their_score": grouped["their_score"],
                }
        return json_clean(out)
