"""report.html in a real browser (Debian's Chromium, driven by Playwright as in
test_serve_browser.py): every embedded image decodes, no cell shows NaN / NA, the header says
what was evaluated, long tables are collapsed, and a full-page screenshot is saved.

The evaluation is of a 16-output NIH-style predictions file on two collections, with one finding
that has no positive image (its AUC cell must explain itself instead of showing nan).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tool_support import importorskip_tool, skipif_missing
from xraytriage.cli.main import main
from xraytriage.labels import ABNORMAL, NIH_FINDINGS, NO_FINDING

playwright_api = importorskip_tool("playwright.sync_api", "playwright is not installed")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
BAD_CELL = {"nan", "na", "<na>", "none", "nat", "inf", "-inf"}

pytestmark = [
    pytest.mark.slow,
    skipif_missing(
        not CHROMIUM.exists(),
        "Debian's Chromium (/usr/bin/chromium) is not installed: run scripts/install-system-deps.sh",
    ),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """``evaluate --predictions --group-by collection`` on 16 outputs; Hernia never positive."""
    tmp = tmp_path_factory.mktemp("report-browser")
    rng = np.random.default_rng(5)
    n = 240
    frame = pd.DataFrame({"image": [f"{i:08d}_000.png" for i in range(n)]})
    frame["patient_id"] = [f"p{i // 2}" for i in range(n)]
    frame["collection"] = np.where(np.arange(n) % 3 == 0, "images-b", "images-c")
    findings = np.zeros((n, len(NIH_FINDINGS)))
    for j, name in enumerate(NIH_FINDINGS):
        if name != "Hernia":
            findings[:, j] = rng.random(n) < 0.15
        frame[f"label_{name}"] = findings[:, j]
        frame[f"prob_{name}"] = np.clip(0.25 * findings[:, j] + 0.75 * rng.random(n), 0, 1)
    abnormal = findings.max(axis=1)
    frame[f"label_{NO_FINDING}"] = 1 - abnormal
    frame[f"prob_{NO_FINDING}"] = np.clip(0.3 * (1 - abnormal) + 0.7 * rng.random(n), 0, 1)
    frame[f"label_{ABNORMAL}"] = abnormal
    frame[f"prob_{ABNORMAL}"] = 1 - frame[f"prob_{NO_FINDING}"]
    frame.to_csv(tmp / "predictions.csv", index=False)
    out = tmp / "eval"
    args = ["evaluate", "--predictions", str(tmp / "predictions.csv"), "--group-by", "collection",
            "--bootstrap", "50", "--output", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    return out / "report.html"


@pytest.fixture(scope="module")
def page(report):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            yield page
        finally:
            browser.close()


def test_every_image_loads(page):
    sizes = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.alt])")
    assert len(sizes) == 6  # clinical summary, ROC, PR, confusion matrices, calibration, triage
    broken = [alt for complete, width, alt in sizes if not complete or width <= 0]
    assert not broken, f"images that did not load: {broken}"


def test_no_cell_shows_nan_or_na(page):
    cells = page.eval_on_selector_all("td, th", "cells => cells.map(c => c.textContent.trim())")
    assert cells
    bad = [c for c in cells if c.lower() in BAD_CELL or "nan" in c.lower().split() or "<NA>" in c]
    assert not bad, f"cells without a value: {bad[:10]}"
    assert "not enough positives" in cells  # Hernia's AUC says why it is missing


def test_header_names_model_data_and_command(page):
    header = dict(
        page.eval_on_selector_all(
            "table.header tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"
        )
    )
    for key in (
        "predictions",
        "dataset",
        "images",
        "patients",
        "data fingerprint",
        "groups",
        "date",
        "command",
    ):
        assert header.get(key), key
    assert header["images"] == "240" and header["patients"] == "120"
    assert "evaluate --predictions" in header["command"] and "--group-by collection" in header["command"]
    assert header["groups"].startswith("collection: images-b (80), images-c (160)")


def test_named_means_grouped_section_and_collapsed_tables(page):
    body = page.inner_text("body")
    assert "mean_auc_14_findings (13 of 14 with both classes)" in body  # Hernia has no AUC
    assert "mean_auc_all_outputs" in body
    headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
    assert any(h.startswith("Within each collection") for h in headings)
    assert headings.index(next(h for h in headings if h.startswith("Within"))) < headings.index(
        "Discrimination"
    )
    details = page.locator("details")
    assert details.count() >= 2  # fixed thresholds and operating points: 16 labels x 5 rows each
    assert not details.first.evaluate("d => d.open")  # collapsed until asked
    assert "best possible order" in body and "random order" in body  # triage reference points


def test_screenshot(page, tmp_path):
    path = tmp_path / "report.png"
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
