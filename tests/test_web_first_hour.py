"""Issue 26: the worklist and study pages at the two common screen widths (1366 and 1920 px) in
Debian's Chromium: no "null" / "undefined" / "NaN" on a page, no horizontal overflow, heatmaps
each in their own colour with an on-page legend and an opacity control, box labels that never
overlap. Screenshots are kept in out/test-artifacts/web (or $XRAYTRIAGE_TEST_ARTIFACTS)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from serve_support import running_server, wait_for
from tool_support import importorskip_tool, skipif_missing

playwright_api = importorskip_tool("playwright.sync_api", "playwright is not installed")
expect = playwright_api.expect

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src" / "xraytriage" / "assets" / "samples"
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
WAIT_S = float(os.environ.get("XRAYTRIAGE_TEST_WAIT_S", "90"))
WIDTHS = (1366, 1920)
BAD_TEXT = r"\b(null|undefined|NaN)\b"

pytestmark = [
    pytest.mark.slow,
    skipif_missing(not CHROMIUM.exists(), "Debian's Chromium (/usr/bin/chromium) is not installed"),
]


@pytest.fixture(scope="module")
def artefacts() -> Path:
    folder = Path(os.environ.get("XRAYTRIAGE_TEST_ARTIFACTS") or REPO / "out" / "test-artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real server with the bundled model and the bundled samples uploaded; waits until every
    study is triaged and the heatmaps of the study with the most findings are drawn."""
    with running_server(tmp_path_factory.mktemp("web-first-hour")) as server:
        files = [
            ("files", (p.name, p.read_bytes()))
            for p in sorted(SAMPLES.iterdir())
            if p.suffix in (".png", ".dcm")
        ]
        httpx.post(server.url + "/api/v1/images", files=files, timeout=120).raise_for_status()

        def triaged():
            items = httpx.get(server.url + "/api/v1/worklist", timeout=30).json()["items"]
            return items if len(items) == len(files) and all(i["state"] == "done" for i in items) else None

        items = wait_for(triaged, WAIT_S, what="every sample triaged")
        busiest = max(items, key=lambda i: len(i["findings"]))
        assert len(busiest["findings"]) >= 2, "the samples no longer give a study with several findings"

        def drawn():
            study = httpx.get(f"{server.url}/api/v1/studies/{busiest['id']}", timeout=30).json()
            return study if study["heatmaps_state"] == "done" else None

        server.items = items
        server.study = wait_for(drawn, WAIT_S, what="heatmaps drawn")
        yield server


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def _page(browser, width: int):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda m: page.errors.append(m.text) if "Content Security Policy" in m.text else None)
    return context, page


def _no_bad_text(page) -> None:
    text = page.locator("body").inner_text()
    found = page.evaluate(f"t => (t.match(/{BAD_TEXT}/g) || [])", text)
    assert not found, f"the page shows {found}"


def _no_horizontal_overflow(page, *selectors: str) -> None:
    width = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"
    for selector in selectors:
        inner = page.locator(selector).evaluate("n => [n.scrollWidth, n.clientWidth]")
        assert inner[0] <= inner[1] + 1, f"{selector} is clipped (scrolls sideways): {inner}"


@pytest.mark.parametrize("width", WIDTHS)
def test_the_worklist_fits_the_window_and_shows_no_null(server, browser, artefacts, width):
    context, page = _page(browser, width)
    page.goto(server.url + "/")
    expect(page.locator("#worklist-body tr")).to_have_count(len(server.items), timeout=30_000)
    _no_bad_text(page)
    _no_horizontal_overflow(page, ".table-wrap")
    # every row still says when it was received: as a column, or folded under the status
    received = page.locator("#worklist-body tr").first.locator("td.received time, .fold-received time")
    assert any(received.nth(i).is_visible() for i in range(received.count()))
    page.screenshot(path=str(artefacts / f"worklist-{width}.png"), full_page=True)
    context.close()
    assert not page.errors, page.errors


@pytest.mark.parametrize("width", WIDTHS)
def test_the_study_page_colours_each_heatmap_with_a_legend_and_labels_that_do_not_overlap(
    server, browser, artefacts, width
):
    study = server.study
    key = [h for h in study["heatmaps"] if h["image_id"] == study["key_image_id"]]
    assert len(key) >= 2
    context, page = _page(browser, width)
    page.goto(f"{server.url}/studies/{study['id']}")
    expect(page.locator("#study")).to_have_attribute("data-heatmaps-state", "done", timeout=30_000)
    caption = page.locator("figure.viewer figcaption").first.inner_text()
    assert "px" in caption and "null" not in caption
    for heatmap in key:
        page.locator(f'#findings-table .heatmap-toggle[data-finding="{heatmap["finding"]}"]').check()
    layers = page.locator(".heat-layer")
    expect(layers).to_have_count(len(key))
    wait_for(
        lambda: layers.evaluate_all("ls => ls.every(l => l.complete && l.naturalWidth > 0)"),
        30,
        what="layers",
    )

    # one colour per finding, the API's (= the overlay pictures'), on the box and in the legend
    colours = {h["finding"]: h["colour"] for h in key}
    assert len(set(colours.values())) == len(colours)
    legend = page.locator("#heat-legend .heat-legend-item")
    expect(legend).to_have_count(len(key))
    for finding, colour in colours.items():
        rgb = "rgb({}, {}, {})".format(*(int(colour[i : i + 2], 16) for i in (1, 3, 5)))
        boxes = page.locator(f'.heat-box[data-finding="{finding}"]')
        if boxes.count():
            assert boxes.first.evaluate("b => getComputedStyle(b).borderTopColor") == rgb
        chip = page.locator(f'#heat-legend .heat-legend-item[data-finding="{finding}"] .heat-chip')
        assert chip.evaluate("c => getComputedStyle(c).backgroundColor") == rgb
        scale = page.locator(f'#heat-legend .heat-legend-item[data-finding="{finding}"] .heat-scale')
        assert "linear-gradient" in scale.evaluate("s => getComputedStyle(s).backgroundImage")

    # box labels never overlap one another
    rects = page.locator(".heat-box-label").evaluate_all(
        "ls => ls.map(l => { const r = l.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })"
    )
    for i, a in enumerate(rects):
        for b in rects[i + 1 :]:
            overlap = a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
            assert not overlap, f"labels overlap: {a} {b}"

    # the opacity control lightens the layers over the anatomy
    page.locator("#heat-opacity").fill("40")
    assert float(layers.first.evaluate("l => getComputedStyle(l).opacity")) == pytest.approx(0.4)
    _no_bad_text(page)
    _no_horizontal_overflow(page)
    page.screenshot(path=str(artefacts / f"study-{width}.png"), full_page=True)
    context.close()
    assert not page.errors, page.errors
