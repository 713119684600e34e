"""Figures (PNG) and one self-contained ``report.html`` (images embedded as base64, inline CSS,
no scripts, no external resources) so a report can be mailed or archived as a single file.

Plots: ROC and PR curves per label, AUC per epoch from a training run's metrics CSV, the
comparison of several runs, reliability diagrams, confusion matrices at the chosen operating
points and the triage simulation. Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from xraytriage.evaluate.calibration import reliability_table
from xraytriage.evaluate.metrics import average_precision, has_both_classes, roc_auc, valid_pairs
from xraytriage.evaluate.runs import auc_columns, is_mean_column, label_of
from xraytriage.labels import ABNORMAL, CHEXPERT_OBSERVATIONS, NIH_FINDINGS, NO_FINDING, canonical_label

LABEL_ORDER: tuple[str, ...] = tuple(
    dict.fromkeys([*NIH_FINDINGS, NO_FINDING, ABNORMAL, *CHEXPERT_OBSERVATIONS])
)
"""Known labels in a fixed order, so a label has the same colour in every plot of every report."""
TRIAGE_COLOUR = "#222222"


def _palette() -> list[str]:
    """Readable, distinct colours: tab10 without its grey, then Dark2, then Set1."""
    cmaps = matplotlib.colormaps
    colours = [cmaps["tab10"](i) for i in range(10) if i != 7]
    colours += [cmaps["Dark2"](i) for i in range(8)] + [cmaps["Set1"](i) for i in range(9) if i != 8]
    return [matplotlib.colors.to_hex(c) for c in colours]


PALETTE = _palette()


def label_colour(label: str) -> str:
    """One colour per label, the same in every plot of every report: by the label's place in
    :data:`LABEL_ORDER`, other names by a stable hash of their spelling."""
    name = canonical_label(str(label))
    if name.startswith("triage"):
        return TRIAGE_COLOUR
    if name in LABEL_ORDER:
        return PALETTE[LABEL_ORDER.index(name) % len(PALETTE)]
    return PALETTE[sum(ord(c) * (k + 1) for k, c in enumerate(name)) % len(PALETTE)]


def _grid(n: int, max_cols: int = 4, size: float = 3.0):
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _labels_with_both_classes(y: np.ndarray, p: np.ndarray, names: Sequence[str]) -> list[int]:
    return [j for j in range(len(names)) if has_both_classes(valid_pairs(y[:, j], p[:, j])[0])]


def _curve_panels(y, p, names, title: str, xlabel: str, ylabel: str, draw):
    """One panel per label with both classes, in the label's colour with a legend naming it;
    ``draw(ax, y, p, name, colour)`` plots it and returns the panel's figure (AUC, AP)."""
    cols = _labels_with_both_classes(y, p, names)
    fig, axes = _grid(max(1, len(cols)))
    for ax, j in zip(axes, cols, strict=False):
        yy, pp = valid_pairs(y[:, j], p[:, j])
        colour = label_colour(names[j])
        ax.set_title(f"{names[j]}  {draw(ax, yy, pp, names[j], colour)}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right" if "specificity" in xlabel else "upper right")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
    if not cols:
        axes[0].text(0.5, 0.5, "no label has both classes", ha="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_roc_curves(y: np.ndarray, p: np.ndarray, names: Sequence[str], title: str = "ROC curves"):
    """One panel per label: ROC curve with its AUC; the diagonal is chance."""

    def draw(ax, yy, pp, name, colour) -> str:
        fpr, tpr, _ = roc_curve(yy, pp)
        ax.plot(fpr, tpr, lw=1.5, c=colour, label=name)
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="chance")
        return f"AUC {roc_auc(yy, pp):.3f}"

    return _curve_panels(y, p, names, title, "1 - specificity", "sensitivity", draw)


def plot_pr_curves(
    y: np.ndarray, p: np.ndarray, names: Sequence[str], title: str = "Precision-recall curves"
):
    """One panel per label: PR curve with its average precision; the line is the prevalence."""

    def draw(ax, yy, pp, name, colour) -> str:
        precision, recall, _ = precision_recall_curve(yy, pp)
        ax.step(recall, precision, where="post", lw=1.5, c=colour, label=name)
        ax.axhline(yy.mean(), ls="--", c="grey", lw=0.8, label=f"prevalence {yy.mean():.2f}")
        return f"AP {average_precision(yy, pp):.3f}"

    return _curve_panels(y, p, names, title, "recall", "precision", draw)


def plot_auc_per_epoch(history: pd.DataFrame, title: str = "Validation AUC per epoch"):
    """AUC of every label per epoch, each in its label's colour; the named means (see
    :mod:`xraytriage.auc_means`) bold in black and grey; and, when present, the loss curves."""
    x = history["epoch"] if "epoch" in history.columns else pd.Series(np.arange(1, len(history) + 1))
    losses = [
        c for c in ("loss", "train_loss", "val_loss") if c in history.columns and history[c].notna().any()
    ]
    fig, axes = plt.subplots(1, 2 if losses else 1, figsize=(11 if losses else 6, 4), squeeze=False)
    ax = axes[0, 0]
    means = 0
    for col in auc_columns(history):
        bold = is_mean_column(col)
        label = col.removeprefix("val_") if bold else label_of(col)
        if bold and label == "mean_auc":
            label = "mean_auc (every output; older run)"
        colour = ("black", "dimgrey", "darkgrey")[min(means, 2)] if bold else label_colour(label)
        means += bold
        ax.plot(x, history[col], marker="o", ms=3, lw=2.5 if bold else 1.0, c=colour, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("AUC")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    if losses:
        for col in losses:
            axes[0, 1].plot(x, history[col], marker="o", ms=3, label=col)
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_ylabel("loss")
        axes[0, 1].set_title("Loss")
        axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_run_comparison(table: pd.DataFrame, title: str = "AUC per label and run"):
    """Heat map of a labels x runs AUC table (the comparison slide)."""
    values = table.to_numpy(dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * table.shape[1], 1.0 + 0.35 * table.shape[0]))
    im = ax.imshow(values, cmap="viridis", vmin=0.5, vmax=1.0, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(table.shape[0]), [str(i) for i in table.index], fontsize=8)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(
                j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, c="white" if v < 0.75 else "black"
            )
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_calibration(
    y: np.ndarray, p: np.ndarray, names: Sequence[str], n_bins: int = 10, title: str = "Calibration"
):
    """Reliability diagram (observed frequency vs mean probability per bin, every label) and
    the histogram of predicted probabilities."""
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    for j, name in enumerate(names):
        table = reliability_table(y[:, j], p[:, j], n_bins)
        if not table.empty:
            ax.plot(
                table["mean_predicted"],
                table["fraction_positive"],
                marker="o",
                ms=3,
                lw=1,
                c=label_colour(name),
                label=name,
            )
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    finite = p[np.isfinite(p)]
    hist.hist(finite, bins=n_bins * 2, range=(0, 1), color="steelblue")
    hist.set_xlabel("predicted probability")
    hist.set_ylabel("count")
    hist.set_title("Predicted probabilities")
    fig.tight_layout()
    return fig


def plot_confusion_matrices(matrices: Mapping[str, Any], title: str = "Confusion matrices"):
    """``{label: {"threshold": t, "matrix": [[tn, fp], [fn, tp]]}}`` -> one panel per label."""
    names = list(matrices)
    fig, axes = _grid(max(1, len(names)), size=2.6)
    for ax, name in zip(axes, names, strict=False):
        entry = matrices[name]
        m = np.asarray(entry["matrix"])
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            dark = v > m.max() / 2
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=10, c="white" if dark else "black")
        ax.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=7)
        ax.set_yticks([0, 1], ["true 0", "true 1"], fontsize=7)
        ax.set_title(f"{name} @ {entry['threshold']:.3g}", fontsize=8)
        for side in ax.spines.values():  # the label's colour, as in every other plot
            side.set_edgecolor(label_colour(name))
            side.set_linewidth(2)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_triage(priority: np.ndarray, abnormal: np.ndarray, simulation: Mapping[str, Any] | None):
    """Left: share of abnormal studies found against the share of the worklist read, triage
    order vs FIFO (the diagonal). Right: mean and maximum wait of abnormal (and critical)
    studies per reading order."""
    fig, (gain, bars) = plt.subplots(1, 2, figsize=(11, 4.5))
    priority = np.asarray(priority, dtype=np.float64)
    abnormal = np.asarray(abnormal, dtype=np.float64)
    order = np.argsort(-priority, kind="stable")
    hits = np.cumsum(abnormal[order] == 1)
    total = max(1, int((abnormal == 1).sum()))
    frac = np.arange(1, len(order) + 1) / max(1, len(order))
    best = np.minimum(np.arange(1, len(order) + 1), total) / total
    gain.plot(np.r_[0, frac], np.r_[0, best], c="tab:green", lw=1, label="best possible order")
    gain.plot(
        np.r_[0, frac], np.r_[0, hits / total], c=TRIAGE_COLOUR, lw=2, label="triage order (this model)"
    )
    gain.plot([0, 1], [0, 1], ls="--", c="grey", label="random / arrival order (expected)")
    k = int(np.ceil(0.1 * len(order) - 1e-9))
    if k:
        x10 = k / len(order)
        points = {"this model": hits[k - 1] / total, "best possible": best[k - 1], "random": x10}
        gain.axvline(x10, c="grey", lw=0.6, ls=":")
        for (_, value), colour in zip(points.items(), (TRIAGE_COLOUR, "tab:green", "grey"), strict=True):
            gain.plot([x10], [value], "o", c=colour, ms=5)
        gain.text(
            0.02,
            0.97,
            "abnormal studies in the first 10%:\n" + ", ".join(f"{k} {v:.0%}" for k, v in points.items()),
            transform=gain.transAxes,
            va="top",
            fontsize=8,
        )
    gain.set_xlabel("share of worklist read")
    gain.set_ylabel("share of abnormal studies found")
    gain.set_title("Worklist gain (dots: the first 10%)")
    gain.legend(fontsize=8, loc="lower right")
    if simulation:
        orders = simulation["orders"]
        groups = [
            g
            for g in ("abnormal", "critical", "normal")
            if all(simulation["waits"][o].get(g, {}).get("n", 0) for o in orders)
        ]
        colours = {"abnormal": "tab:red", "critical": "tab:purple", "normal": "tab:blue"}
        width = 0.8 / max(1, 2 * len(groups))
        x = np.arange(len(orders))
        k = 0
        for g in groups:
            for stat, hatch, alpha in (("mean", "", 1.0), ("max", "//", 0.45)):
                vals = [simulation["waits"][o][g][stat] for o in orders]
                offset = (k - len(groups) + 0.5) * width
                bars.bar(
                    x + offset, vals, width, color=colours[g], alpha=alpha, hatch=hatch, label=f"{g} {stat}"
                )
                k += 1
        bars.set_xticks(x, orders, fontsize=8)
        bars.set_ylabel("wait (minutes)")
        bars.set_title(
            f"Reading queue: {simulation['studies']} studies, utilisation {simulation['utilisation']:.0%}"
        )
        bars.legend(fontsize=8)
    else:
        bars.set_visible(False)
    fig.tight_layout()
    return fig


MISSING = "–"
NOT_ENOUGH = "not enough positives"
PREVIEW_ROWS = 8
"""Rows of a long table shown before its collapsed full version."""
LONG_TABLE = 20


def cell_text(value: Any, digits: int = 3, missing: str = MISSING) -> str:
    """One table cell: numbers rounded, missing values (None, NaN, pd.NA) as ``missing`` (never
    ``nan`` or ``<NA>``)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return missing
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not math.isfinite(float(value)):
            return missing
        return f"{float(value):.{digits}f}"
    text = str(value)
    return missing if text.strip().lower() in ("nan", "<na>", "none", "nat") else text


def table_html(frame: pd.DataFrame, digits: int = 3) -> str:
    """A plain HTML table of ``frame`` (index columns as row headers) through :func:`cell_text`."""
    index_names = [n if n is not None else "" for n in frame.index.names]
    show_index = not (
        len(index_names) == 1 and index_names[0] == "" and isinstance(frame.index, pd.RangeIndex)
    )
    head = "".join(f"<th>{html.escape(str(n))}</th>" for n in (index_names if show_index else []))
    head += "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for key, values in zip(frame.index, frame.itertuples(index=False, name=None), strict=True):
        keys = (key if isinstance(key, tuple) else (key,)) if show_index else ()
        cells = "".join(f"<th>{html.escape(cell_text(k, digits))}</th>" for k in keys)
        cells += "".join(f"<td>{html.escape(cell_text(v, digits))}</td>" for v in values)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


class HtmlReport:
    """Collects sections and writes PNG files plus one self-contained HTML page."""

    def __init__(self, output_dir: str | Path, title: str) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.title = title
        self.parts: list[str] = []
        self.figures: list[Path] = []

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def warning(self, text: str) -> None:
        self.parts.append(f"<p class='warning'><b>Warning:</b> {html.escape(text)}</p>")

    def header(self, items: Mapping[str, Any]) -> None:
        """The "what was evaluated" block: one row per item, missing values said so."""
        rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(cell_text(v, missing='not recorded'))}</td></tr>"
            for k, v in items.items()
        )
        self.parts.append(f"<table class='header'>{rows}</table>")

    def table(
        self,
        frame: pd.DataFrame,
        caption: str | None = None,
        digits: int = 3,
        preview: int | None = None,
        note: str = "",
    ) -> None:
        """A table; one longer than :data:`LONG_TABLE` rows shows its first ``preview`` rows
        (order the interesting ones first) and the whole table collapsed below them."""
        title = f"<h3>{html.escape(caption)}</h3>" if caption else ""
        if note:
            title += f"<p class='note'>{html.escape(note)}</p>"
        if len(frame) <= LONG_TABLE:
            self.parts.append(title + table_html(frame, digits))
            return
        k = preview or PREVIEW_ROWS
        self.parts.append(
            title
            + table_html(frame.iloc[:k], digits)
            + f"<details><summary>All {len(frame)} rows</summary>{table_html(frame, digits)}</details>"
        )

    def figure(self, fig, name: str, caption: str = "") -> Path:
        """Save ``fig`` as ``<name>.png`` and embed the same bytes in the page."""
        path = self.output_dir / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        alt = html.escape(caption or name)
        self.parts.append(
            f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"/>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.figures.append(path)
        return path

    def write(self, name: str = "report.html") -> Path:
        style = (
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:12px;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
            "th{background:#f4f4f4}"
            "table.header th{text-align:left}table.header td{text-align:left}"
            ".warning{color:#a00;border:2px solid #a00;padding:.5em;background:#fff4f4}"
            ".note{font-size:12px;color:#555}"
            "details{margin:0 0 1em 0}summary{cursor:pointer;color:#036}"
            "img{max-width:100%}"
            "figure{margin:1em 0}figcaption{font-size:12px;color:#555}"
        )
        page = (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{style}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</body></html>"
        )
        path = self.output_dir / name
        path.write_text(page, encoding="utf-8")
        return path


def _auc_cell(m: Mapping[str, Any], value: float | None) -> Any:
    """An AUC/AP value, or why there is none."""
    if value is not None and np.isfinite(value):
        return value
    if m.get("positives", 0) == 0:
        return NOT_ENOUGH
    return "not enough negatives" if m.get("positives") == m.get("n") else MISSING


def _summary_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """Named means first (primary first), then every label in the model's order."""
    from xraytriage.evaluate.runner import mean_caption

    boot = result["bootstrap"]["labels"]
    rows = []
    for name, entry in result.get("means", {}).items():
        if not name.startswith("mean_auc"):
            continue
        rows.append(
            {
                "label": mean_caption(name, entry),
                "n": "",
                "positives": "",
                "prevalence": "",
                "AUC": entry["auc"],
                "AUC 95% CI": _ci(entry),
                "AP": entry["average_precision"],
                "AP 95% CI": _ci(result["bootstrap"]["means"][name]["average_precision"]),
                "ECE": "",
            }
        )
    for name, m in result["metrics"]["labels"].items():
        rows.append(
            {
                "label": name,
                "n": m["n"],
                "positives": m["positives"],
                "prevalence": m["prevalence"],
                "AUC": _auc_cell(m, m["auc"]),
                "AUC 95% CI": _ci(boot[name]["auc"]),
                "AP": _auc_cell(m, m["average_precision"]),
                "AP 95% CI": _ci(boot[name]["average_precision"]),
                "ECE": result["calibration"][name]["ece"],
            }
        )
    blank = dict.fromkeys(("n", "positives", "prevalence", "AUC 95% CI", "AP 95% CI", "ECE"), "")
    rows.append(
        {
            **blank,
            "label": f"micro ({len(result['labels'])} labels pooled)",
            "AUC": result["metrics"]["micro"]["auc"],
            "AP": result["metrics"]["micro"]["average_precision"],
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
    from xraytriage.evaluate.runs import comparison_table, read_history

    labels = list(result["labels"])
    y, p = label_matrix(predictions, labels), prob_matrix(predictions, labels)
    report = HtmlReport(output_dir, title)
    warning = overlap_warning(result.get("training_overlap") or {})
    if warning:
        report.warning(warning)
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
    report.table(_summary_table(result), "Per label")
    report.figure(plot_roc_curves(y, p, labels), "roc_curves", "ROC curve per label (one colour per label)")
    report.figure(plot_pr_curves(y, p, labels), "pr_curves", "Precision-recall curve per label")
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
        plot_calibration(y, p, labels, result["config"]["n_bins"]), "calibration", "Reliability diagram"
    )
    if "study_level" in result:
        report.heading("Study level")
        report.table(_study_table(result), "Image probabilities aggregated per study")
    if "triage" in result:
        tri = result["triage"]
        _triage_section(report, tri)
        report.figure(
            plot_triage(tri["priority"], tri["abnormal"], tri["simulation"]),
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
            "per image; each model figure next to a random-heatmap control computed the same way."
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
    from xraytriage.evaluate.runs import find_evaluation

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
    and, for runs with predictions on shared images (see ``runs.run_predictions``), DeLong /
    paired-bootstrap tests of each run against the first on the images they share."""
    import datetime as _dt
    import shlex

    from xraytriage.evaluate.compare import compare_predictions
    from xraytriage.evaluate.predictions import read_predictions_csv
    from xraytriage.evaluate.runs import comparison_table, find_run_metrics, read_history, run_predictions

    table, sources = comparison_table(run_dirs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index_label="label")
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
        result["table"].to_csv(out / f"delong_{_safe(names[0])}_vs_{_safe(other)}.csv", index=False)
        report.table(
            result["table"].set_index("label"),
            f"{names[0]} vs {other} on {result['images']} shared images (DeLong, paired bootstrap)",
            digits=4,
        )
    return report.write()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
