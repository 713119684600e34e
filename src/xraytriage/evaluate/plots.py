"""Figures of an evaluation (matplotlib, headless Agg): ROC and PR curves per label, AUC per
epoch from a training run's metrics CSV, the comparison of several runs, reliability diagrams,
confusion matrices at the chosen operating points and the triage simulation.

One colour per label (:func:`label_colour`) in every plot of every report, and legends that
name the labels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from xraytriage.evaluate.calibration import reliability_table
from xraytriage.evaluate.metrics import average_precision, has_both_classes, roc_auc, valid_pairs
from xraytriage.evaluate.run_folders import auc_columns, is_mean_column, label_of
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


def plot_roc_curves(
    y_true: np.ndarray, y_score: np.ndarray, *, names: Sequence[str], title: str = "ROC curves"
):
    """One panel per label: ROC curve with its AUC; the diagonal is chance."""

    def draw(ax, yy, pp, name, colour) -> str:
        fpr, tpr, _ = roc_curve(yy, pp)
        ax.plot(fpr, tpr, lw=1.5, c=colour, label=name)
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="chance")
        return f"AUC {roc_auc(yy, pp):.3f}"

    return _curve_panels(y_true, y_score, names, title, "1 - specificity", "sensitivity", draw)


def plot_pr_curves(
    y_true: np.ndarray, y_score: np.ndarray, *, names: Sequence[str], title: str = "Precision-recall curves"
):
    """One panel per label: PR curve with its average precision; the line is the prevalence."""

    def draw(ax, yy, pp, name, colour) -> str:
        precision, recall, _ = precision_recall_curve(yy, pp)
        ax.step(recall, precision, where="post", lw=1.5, c=colour, label=name)
        ax.axhline(yy.mean(), ls="--", c="grey", lw=0.8, label=f"prevalence {yy.mean():.2f}")
        return f"AP {average_precision(yy, pp):.3f}"

    return _curve_panels(y_true, y_score, names, title, "recall", "precision", draw)


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
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    names: Sequence[str],
    n_bins: int = 10,
    title: str = "Calibration",
):
    """Reliability diagram (observed frequency vs mean probability per bin, every label) and
    the histogram of predicted probabilities."""
    y, p = y_true, y_score
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    for j, name in enumerate(names):
        table = reliability_table(y[:, j], p[:, j], n_bins=n_bins)
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
    hist.set_title(
        f"Predicted probabilities of {names[0]}"
        if len(names) == 1
        else "Predicted probabilities, all labels pooled"
    )
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


def plot_triage(y_true: np.ndarray, y_score: np.ndarray, *, simulation: Mapping[str, Any] | None):
    """Left: share of abnormal studies (``y_true`` 1) found against the share of the worklist
    read in priority (``y_score``) order, vs FIFO (the diagonal). Right: mean and maximum wait
    of abnormal (and critical) studies per reading order."""
    fig, (gain, bars) = plt.subplots(1, 2, figsize=(11, 4.5))
    priority = np.asarray(y_score, dtype=np.float64)
    abnormal = np.asarray(y_true, dtype=np.float64)
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
