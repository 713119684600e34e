"""What a clinical lead needs from an evaluation, in a minute: per finding, at the threshold the
model will run with, how many of the images that have it are flagged (sensitivity), how many of
those without it are left alone (specificity), how many images get flagged at all (flag rate),
each with a 95% confidence interval, and plain warnings where a finding is missed most of the
time or its probabilities cannot be read as chances.

The intervals are Wilson score intervals over images: exact enough at the counts an evaluation
has, never outside [0, 1]; images of one patient are counted as independent, so with several
images per patient they are somewhat too narrow (the report says so).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from xraytriage.stats import known_rows

LOW_SENSITIVITY = 0.3
"""Below this sensitivity at its threshold a finding is mostly missed: the report warns."""
HIGH_ECE = 0.1
"""Above this expected calibration error a finding's probabilities are off by more than 10
percentage points on average: the report warns."""
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n`` with its Wilson 95% interval (NaN when ``n`` is 0)."""

    k: int
    n: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    def text(self) -> str:
        if not self.n:
            return "not measurable (no such images)"
        return f"{self.value:.0%} (95% CI {self.low:.0%}–{self.high:.0%}; {self.k} of {self.n})"


def wilson(k: int, n: int, z: float = Z95) -> Rate:
    """The Wilson score interval of ``k`` successes in ``n`` trials."""
    if n <= 0:
        return Rate(0, 0, math.nan, math.nan)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Rate(k, n, max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class FindingSummary:
    """One finding at its operating threshold."""

    label: str
    threshold: float
    sensitivity: Rate
    specificity: Rate
    flag_rate: Rate
    ece: float | None
    warnings: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        return (
            f"{self.label} (threshold {self.threshold:.2f}): flags {self.flag_rate.text()} of the images; "
            f"catches {self.sensitivity.text()} of the images with {self.label}; leaves "
            f"{self.specificity.text()} of the images without it unflagged."
        )


def summarise_findings(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    ece: Mapping[str, float | None] | None = None,
) -> list[FindingSummary]:
    """Per label (columns of ``y_true`` / ``y_score``; NaN truth = not annotated, left out): the
    rates at ``thresholds[label]`` and the warnings that apply."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_score, dtype=np.float64)
    out = []
    for j, name in enumerate(labels):
        known = known_rows(y[:, j], p[:, j])
        truth, flagged = y[known, j] == 1, p[known, j] >= float(thresholds[name])
        summary = FindingSummary(
            label=name,
            threshold=float(thresholds[name]),
            sensitivity=wilson(int((flagged & truth).sum()), int(truth.sum())),
            specificity=wilson(int((~flagged & ~truth).sum()), int((~truth).sum())),
            flag_rate=wilson(int(flagged.sum()), int(known.sum())),
            ece=None if not ece or ece.get(name) is None or not np.isfinite(ece[name]) else float(ece[name]),
        )
        summary.warnings = finding_warnings(summary)
        out.append(summary)
    return out


def finding_warnings(s: FindingSummary) -> list[str]:
    """Plain-language warnings: mostly missed at its threshold, or probabilities off."""
    warnings = []
    if s.sensitivity.n and s.sensitivity.value < LOW_SENSITIVITY:
        warnings.append(
            f"{s.label}: at its threshold ({s.threshold:.2f}) the model flags only "
            f"{s.sensitivity.value:.0%} of the images that have it (95% CI {s.sensitivity.low:.0%}–"
            f"{s.sensitivity.high:.0%}): do not rely on it to flag {s.label} on data like this; "
            "a site threshold (`xraytriage calibrate` on the site's own labelled images) may help."
        )
    if s.ece is not None and s.ece > HIGH_ECE:
        warnings.append(
            f"{s.label}: its probabilities are off by {s.ece:.2f} on average (ECE above {HIGH_ECE:g}): "
            "read them as a ranking, not as the chance that the finding is present; recalibrate on "
            "the site's data before showing them as chances."
        )
    return warnings


DEFINITIONS = (
    "Sensitivity: of the images that have the finding, the share the model flags. "
    "Specificity: of the images without it, the share the model leaves unflagged. "
    "Flag rate: the share of all images the model flags for the finding (what the reading team "
    "sees marked). 95% CI (confidence interval): the range that holds the true rate with 95% "
    "confidence given how many images were measured (Wilson interval; images of one patient "
    "are counted as independent, so it is somewhat narrow when patients have several images). "
    "ECE (expected calibration error): on average, how far a stated probability is from how "
    "often the finding is really present at that probability (0.10 = off by 10 percentage points)."
)


def plot_operating_points(summaries: Sequence[FindingSummary], title: str):
    """One picture: per finding, sensitivity and specificity with their 95% CIs, and the flag
    rate; the line at :data:`LOW_SENSITIVITY` marks where the report warns."""
    import matplotlib.pyplot as plt

    names = [s.label for s in summaries]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(names) + 1.6))
    rows = np.arange(len(names))[::-1]
    series = (
        ("sensitivity (flagged when present)", "sensitivity", "#c0392b", -0.2, "o"),
        ("specificity (left alone when absent)", "specificity", "#2471a3", 0.0, "s"),
        ("flag rate (all images)", "flag_rate", "#7d7d7d", 0.2, "D"),
    )
    for label, attr, colour, offset, marker in series:
        rates = [getattr(s, attr) for s in summaries]
        values = np.array([r.value for r in rates])
        low = np.array([max(0.0, r.value - r.low) if r.n else 0.0 for r in rates])  # rounding: never < 0
        high = np.array([max(0.0, r.high - r.value) if r.n else 0.0 for r in rates])
        ax.errorbar(
            values,
            rows + offset,
            xerr=[low, high],
            fmt=marker,
            color=colour,
            ms=5,
            capsize=2,
            lw=1,
            label=label,
        )
    ax.axvline(LOW_SENSITIVITY, color="#c0392b", ls=":", lw=1)
    ax.set_yticks(rows, names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of images (95% CI)")
    ax.set_title(title, fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
