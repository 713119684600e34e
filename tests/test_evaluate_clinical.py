"""Issue 26: report.html opens with a summary a clinical lead can read in a minute: sensitivity,
specificity and flag rate per finding at its threshold with 95% CIs, warnings where a finding
is mostly missed or its probabilities are off, every metric defined on first use, and the
wait-time table explained (with a measured aging bound)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from xraytriage.cli.main import main
from xraytriage.evaluate.clinical import HIGH_ECE, LOW_SENSITIVITY, summarise_findings, wilson


def test_wilson_interval_matches_the_textbook_values():
    r = wilson(5, 10)
    assert (
        r.value == 0.5
        and r.low == pytest.approx(0.2366, abs=1e-4)
        and r.high == pytest.approx(0.7634, abs=1e-4)
    )
    zero = wilson(0, 20)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.1611, abs=1e-4)
    assert np.isnan(wilson(0, 0).value)


def test_rates_and_warnings_per_finding():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, (n, 2)).astype(float)
    p = np.column_stack([0.2 + 0.6 * y[:, 0], np.full(n, 0.05)])  # A: separable; B: never flagged
    y[:7, 1] = np.nan  # not annotated: left out
    out = summarise_findings(
        y, p, labels=["A", "B"], thresholds={"A": 0.5, "B": 0.5}, ece={"A": 0.02, "B": 0.45}
    )
    a, b = out
    positives = int((y[:, 0] == 1).sum())
    assert (a.sensitivity.k, a.sensitivity.n) == (positives, positives) and a.specificity.value == 1.0
    assert a.flag_rate.value == pytest.approx(positives / n) and a.warnings == []
    assert b.flag_rate.n == n - 7 and b.sensitivity.value == 0.0
    assert len(b.warnings) == 2
    assert "flags only 0%" in b.warnings[0] and "do not rely on it" in b.warnings[0]
    assert "off by 0.45" in b.warnings[1] and f"{HIGH_ECE:g}" in b.warnings[1]
    assert LOW_SENSITIVITY == 0.3


def _predictions(tmp_path):
    """Out-of-fold-like predictions: Mass ranked well; Pneumonia nearly always below its
    threshold and badly calibrated (the pediatric pattern of the issue)."""
    rng = np.random.default_rng(3)
    n = 300
    frame = pd.DataFrame(
        {"path": [f"/x/img{i}.png" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)]}
    )
    mass = rng.integers(0, 2, n).astype(float)
    pneumonia = (rng.random(n) < 0.6).astype(float)
    frame["Mass"], frame["prob_Mass"] = mass, np.clip(0.25 + 0.5 * mass + 0.2 * rng.standard_normal(n), 0, 1)
    frame["Pneumonia"], frame["prob_Pneumonia"] = (
        pneumonia,
        np.clip(0.05 + 0.01 * pneumonia + 0.05 * rng.random(n), 0, 1),
    )
    path = tmp_path / "oof.csv"
    frame.to_csv(path, index=False)
    return path


def test_report_opens_with_the_clinical_summary_and_defines_its_metrics(tmp_path):
    out = tmp_path / "eval"
    args = [
        "evaluate",
        "--predictions",
        str(_predictions(tmp_path)),
        "--bootstrap",
        "30",
        "--output",
        str(out),
        "--quiet",
        "--operating-point",
        "specificity:0.95",
        "--max-wait",
        "500",
    ]  # longer than any wait here
    assert main(args) == 0
    page = (out / "report.html").read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0].startswith("Summary for a clinical lead")
    first = text.index("Summary for a clinical lead")
    # definitions at first use
    for word, definition in (
        ("ECE", "ECE (expected calibration error)"),
        ("AUC", "AUC (area under the ROC curve)"),
        ("AP ", "AP (average precision)"),
        ("Sensitivity", "Sensitivity: of the images"),
    ):
        assert text.index(definition) <= text.index(word, first), word
    # the badly calibrated, mostly missed finding is warned about; the good one is not
    warnings = re.findall(r"<p class='warning'>(.*?)</p>", page)
    assert any("Pneumonia" in w and "flags only" in w for w in warnings)
    assert any("Pneumonia" in w and "off by" in w for w in warnings)
    assert not any("Mass:" in w and "flags only" in w for w in warnings)
    assert (out / "clinical_summary.png").is_file() and "Dots: the measured share" in page
    assert re.search(r"Mass \(threshold [0-9.]+\): flags \d+% \(95% CI \d+%–\d+%", text)
    # the wait table explained, escalation that never triggered said so, aging measured
    assert "How to read the table" in text
    assert "escalation never triggered" in text
    assert "Triage with aging, measured in the same simulated day" in text
    assert re.search(r"Measured here: reading any study that has waited [0-9.]+ min next", text)
    assert "sensitivity below 0.3; ECE above 0.1" in text  # Pneumonia's row in the summary table


def test_the_probability_histogram_names_its_labels():
    from xraytriage.evaluate.plots import plot_calibration

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, (50, 2)).astype(float), rng.random((50, 2))
    titles = [ax.get_title() for ax in plot_calibration(y, p, names=["Mass", "Nodule"], n_bins=10).axes]
    assert "Predicted probabilities, all labels pooled" in titles
    titles = [ax.get_title() for ax in plot_calibration(y[:, :1], p[:, :1], names=["Mass"], n_bins=10).axes]
    assert "Predicted probabilities of Mass" in titles


def test_the_console_repeats_the_clinical_warnings_in_one_line_each():
    from xraytriage.cli.evaluate import _clinical_warnings

    result = {
        "labels": ["Mass", "Pneumonia"],
        "config": {"operating_point": "youden"},
        "operating_points": {
            "rules": {
                "youden": {
                    "Mass": {"threshold": 0.5, "sensitivity": 0.1},
                    "Pneumonia": {"threshold": 0.5, "sensitivity": 0.9},
                },
                "checkpoint": {
                    "Mass": {"threshold": 0.4, "sensitivity": 0.8},
                    "Pneumonia": {"threshold": 0.43, "sensitivity": 0.06},
                },
            }
        },
        "calibration": {"Mass": {"ece": 0.03}, "Pneumonia": {"ece": 0.61}},
    }
    lines = _clinical_warnings(result)
    assert len(lines) == 2 and all(line.startswith("Pneumonia: ") for line in lines)  # the model's thresholds
    assert "0.43 only 6%" in lines[0] and "off by 0.61" in lines[1]
