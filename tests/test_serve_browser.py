"""The web pages in a real browser: Debian's Chromium driven by Playwright against the real server.

One server (bundled default model, temp data folder) for the module: upload real NIH PNGs, a
real DICOM and a text file through the upload page, then the worklist (order, filters, live
update, CSV), the study page (heatmap overlay + box, on-demand heatmap, reader status), and a
token-protected server (login page, then the pages and their API calls with the cookie).
"""

from __future__ import annotations

import base64
import csv
import io
import os
import struct
import zlib
from pathlib import Path

import httpx
import pytest

from serve_support import running_server, wait_for
from tool_support import importorskip_tool, skipif_missing
from xraytriage.triage.reasons import tier_rank

playwright_api = importorskip_tool("playwright.sync_api", "playwright is not installed")
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = int(float(os.environ.get("XRAYTRIAGE_TEST_WAIT_S", "45")) * 1000)  # longer on a busy machine
N_NIH = 4
REJECTION = "not a PNG, JPEG, TIFF or DICOM file by its content"

pytestmark = [
    pytest.mark.slow,
    skipif_missing(
        not CHROMIUM.exists(),
        "Debian's Chromium (/usr/bin/chromium) is not installed: apt install chromium",
    ),
]


def nih_images(shared_data: Path, start: int, count: int) -> list[Path]:
    images = sorted((shared_data / "nih" / "images").glob("*.png"))
    assert len(images) >= start + count, "the shared NIH sample has too few images"
    return images[start : start + count]


def assert_png(path: Path, min_bytes: int = 10_000) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve-browser")) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []  # JavaScript exceptions and Content-Security-Policy refusals fail the test
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def uploaded(server, browser, shared_data, shots):
    """Upload 4 NIH PNGs, the SIIM DICOM and a text file through the upload page, in one go;
    wait until every accepted study is triaged. Returns {filename: list item facts}."""
    files = [
        *nih_images(shared_data, 0, N_NIH),
        shared_data / "dicom" / "siim_cr_chest_pa.dcm",
        Path(__file__),
    ]
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/upload")
    page.set_input_files("#file-input", [str(f) for f in files])
    items = page.locator("#upload-list li.upload-item")
    expect(items).to_have_count(len(files))
    for f in files:
        item = page.locator(f'li.upload-item[data-filename="{f.name}"]')
        expect(item).to_have_attribute(
            "data-result", "accepted" if f.suffix != ".py" else "rejected", timeout=WAIT_MS
        )
        if f.suffix != ".py":
            expect(item).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    page.screenshot(path=str(shots / "upload.png"), full_page=True)
    facts = {}
    for f in files:
        item = page.locator(f'li.upload-item[data-filename="{f.name}"]')
        link = item.locator("a.study-link")
        facts[f.name] = {
            "result": item.get_attribute("data-result"),
            "study_id": item.get_attribute("data-study-id"),
            "href": link.get_attribute("href") if link.count() else None,
            "message": item.locator(".message").inner_text(),
            "progress": item.locator("progress").evaluate("p => p.value"),
        }
    context.close()
    assert not errors, f"JavaScript errors on the upload page: {errors}"
    return facts


def api_worklist(server, **params) -> dict:
    response = httpx.get(server.url + "/api/v1/worklist", params=params, timeout=30)
    response.raise_for_status()
    return response.json()


def study_json(server, study_id: str) -> dict:
    response = httpx.get(f"{server.url}/api/v1/studies/{study_id}", timeout=30)
    response.raise_for_status()
    return response.json()


def row_ids(page) -> list[str]:
    return page.locator("#worklist-body tr").evaluate_all("rows => rows.map(r => r.dataset.studyId)")


def test_upload_page_shows_each_files_result(uploaded, server, shots):
    accepted = {name: f for name, f in uploaded.items() if f["result"] == "accepted"}
    assert len(accepted) == N_NIH + 1  # every image, the DICOM included
    rejected = uploaded[Path(__file__).name]
    assert rejected["result"] == "rejected"
    assert REJECTION in rejected["message"]
    assert rejected["study_id"] is None and rejected["href"] is None
    for name, facts in accepted.items():
        assert facts["progress"] == 100, name
        assert facts["href"] == f"/studies/{facts['study_id']}"
        assert "done" in facts["message"] and "priority" in facts["message"], facts["message"]
        study = study_json(server, facts["study_id"])
        assert study["state"] == "done"
        assert study["image_list"][0]["filename"] == name
    assert len({f["study_id"] for f in accepted.values()}) == len(accepted)
    assert_png(shots / "upload.png")


def test_worklist_is_sorted_by_priority(uploaded, server, page, shots):
    page.goto(server.url + "/")
    api = api_worklist(server)
    expect(page.locator("#worklist-body tr")).to_have_count(api["total"])
    uploaded_ids = {f["study_id"] for f in uploaded.values() if f["study_id"]}
    assert uploaded_ids <= {item["id"] for item in api["items"]}
    ids = row_ids(page)
    assert ids == [item["id"] for item in api["items"]]
    shown = [float(t) for t in page.locator("#worklist-body td.priority").all_inner_texts()]
    exact = [
        float(p)
        for p in page.locator("#worklist-body tr").evaluate_all("rs => rs.map(r => r.dataset.priority)")
    ]
    # critical and STAT studies first, then by priority (the bundled model may have a critical tier)
    critical = [tier_rank(item["tier"], item["site_priority"]) for item in api["items"]]
    assert critical == sorted(critical, reverse=True)
    for values in (exact, shown):
        pairs = list(zip(critical, values, strict=True))
        assert pairs == sorted(pairs, reverse=True)
    # each flag's badge carries its reason; critical studies have their own badge
    for row, item in zip(page.locator("#worklist-body tr").all(), api["items"], strict=True):
        if item["tier"] == "critical":
            expect(row.locator(".critical-badge")).to_have_attribute("title", item["flag_reason"])
        elif item["flagged"]:
            expect(row.locator(".flag-badge")).to_have_attribute("title", item["flag_reason"])
            if not item["findings"]:
                expect(row.locator(".flag-reason")).to_have_text(item["flag_reason"])
    ranks = page.locator("#worklist-body td.rank").all_inner_texts()
    assert ranks == [str(i) for i in range(1, len(ids) + 1)]
    for study_id, priority in zip(ids, exact, strict=True):
        own = study_json(server, study_id)
        assert own["priority"] == pytest.approx(priority, abs=1e-6)
    first = page.locator("#worklist-body tr").first
    top = api["items"][0]
    expect(first.locator("a.study-link")).to_have_text(top["name"])
    expect(first.locator(".read-status .badge")).to_have_text("new")
    expect(first.locator(".processing .state")).to_have_text("done")
    listed = first.locator(".top-findings li.finding")
    assert listed.count() == min(3, len(top["findings"]))
    if len(top["findings"]) > 3:
        expect(first.locator(".top-findings li.more")).to_have_text(f"+{len(top['findings']) - 3} more")
    expect(page.locator("#queue-indicator")).to_contain_text("Queue")
    page.screenshot(path=str(shots / "worklist.png"), full_page=True)
    assert_png(shots / "worklist.png")


def test_worklist_filters_by_finding_and_exports_csv(uploaded, server, page):
    page.goto(server.url + "/")
    everything = api_worklist(server)
    counts: dict[str, int] = {}
    for item in everything["items"]:
        for finding in item["findings"]:
            counts[finding["name"]] = counts.get(finding["name"], 0) + 1
    # a finding that some studies list and others do not, so the filter has something to drop
    partial = [name for name, n in counts.items() if n < everything["total"]]
    finding = sorted(partial or counts, key=lambda n: (-counts[n], n))[0]
    expected = [item["id"] for item in api_worklist(server, finding=finding)["items"]]
    assert expected
    page.select_option("#finding-filter", finding)
    expect(page.locator("#worklist-body tr")).to_have_count(len(expected))
    assert row_ids(page) == expected
    assert f"finding={finding.replace(' ', '+')}" in page.url
    href = page.locator("#export-csv").get_attribute("href")
    assert href.startswith("/api/v1/worklist.csv?") and "finding=" in href
    response = httpx.get(server.url + href, timeout=30)
    assert response.status_code == 200
    assert [row["study_id"] for row in csv.DictReader(io.StringIO(response.text))] == expected
    # the filtered view survives a reload (filters live in the URL)
    page.reload()
    expect(page.locator("#finding-filter")).to_have_value(finding)
    expect(page.locator("#worklist-body tr")).to_have_count(len(expected))
    page.select_option("#finding-filter", "")
    expect(page.locator("#worklist-body tr")).to_have_count(everything["total"])


def test_worklist_shows_more_rows_on_request(uploaded, server, page):
    everything = [item["id"] for item in api_worklist(server)["items"]]
    assert len(everything) >= 5
    page.goto(server.url + "/?limit=2")  # pages of 2 rows instead of 500
    expect(page.locator("#worklist-body tr")).to_have_count(2)
    expect(page.locator("#worklist-count")).to_contain_text(f"showing 2 of {len(everything)}")
    page.click("#show-more")
    expect(page.locator("#worklist-body tr")).to_have_count(4)
    assert row_ids(page) == everything[:4]
    page.wait_for_timeout(2500)  # a poll later the page still shows the rows asked for
    expect(page.locator("#worklist-body tr")).to_have_count(4)
    for _ in range(len(everything)):
        if page.locator("#show-more").is_hidden():
            break
        shown = len(row_ids(page))
        page.click("#show-more")
        expect(page.locator("#worklist-body tr")).to_have_count(min(shown + 2, len(everything)))
    expect(page.locator("#show-more")).to_be_hidden()  # everything is shown: no more to ask for
    assert row_ids(page) == everything


def test_worklist_shows_new_studies_without_reload(uploaded, server, page, shared_data):
    page.goto(server.url + "/")
    before = api_worklist(server)["total"]
    expect(page.locator("#worklist-body tr")).to_have_count(before)
    extra = nih_images(shared_data, N_NIH, 1)[0]
    response = httpx.post(
        server.url + "/api/v1/images",
        files={"files": (extra.name, extra.read_bytes(), "image/png")},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    study_id = response.json()["study_ids"][0]
    row = page.locator(f'#worklist-body tr[data-study-id="{study_id}"]')
    expect(row).to_have_count(1, timeout=WAIT_MS)  # the page polls every ~2 s
    expect(row).to_have_attribute("data-state", "done", timeout=WAIT_MS)
    wait_for(
        lambda: row_ids(page) == [i["id"] for i in api_worklist(server)["items"]], 20, what="sorted rows"
    )


def test_study_page_heatmap_box_and_read_status(uploaded, server, page, shots):
    page.goto(server.url + "/")
    # the highest-ranked study with a finding above its threshold (those get heatmaps)
    top = next(item for item in api_worklist(server)["items"] if item["findings"])
    page.locator(f'#worklist-body tr[data-study-id="{top["id"]}"] a.study-link').click()
    page.wait_for_url(f"**/studies/{top['id']}")
    study = page.locator("#study")
    expect(study).to_have_attribute("data-study-id", top["id"])
    expect(page.locator("#disclaimer")).to_contain_text("not a diagnosis")
    picture = page.locator("img.radiograph").first
    expect(picture).to_be_visible()
    assert picture.evaluate("img => img.complete && img.naturalWidth > 0")
    table_names = page.locator("#findings-body tr").evaluate_all("rows => rows.map(r => r.dataset.finding)")
    assert top["findings"][0]["name"] in table_names
    if top["flag_reason"]:  # the study page says why it is flagged
        expect(page.locator("#flag-reason")).to_have_text(top["flag_reason"])
    else:
        expect(page.locator("#flag-reason")).to_have_count(0)

    # heatmaps are drawn in the background; the page shows their toggles when they are ready
    expect(study).to_have_attribute("data-heatmaps-state", "done", timeout=WAIT_MS)
    detail = study_json(server, top["id"])
    heatmap = next(h for h in detail["heatmaps"] if h["box"] is not None)
    finding = heatmap["finding"]
    image = next(i for i in detail["image_list"] if i["id"] == heatmap["image_id"])
    toggle = page.locator(f'#findings-table .heatmap-toggle[data-finding="{finding}"]')
    expect(page.locator(".heat-layer")).to_have_count(0)
    toggle.check()
    layer = page.locator(f'.heat-layer[data-finding="{finding}"]')
    expect(layer).to_be_visible()
    wait_for(
        lambda: layer.evaluate("img => img.complete && img.naturalWidth > 0"), 30, what="heat layer loaded"
    )
    box = page.locator(f'.heat-box[data-finding="{finding}"]')
    expect(box).to_be_visible()
    expect(box).to_contain_text(finding)
    # the box is drawn where the API says, in the image's own proportions
    stage = page.locator(".stage").first.bounding_box()
    drawn = box.bounding_box()
    assert stage["width"] > 300 and stage["height"] > 300, f"the image is shown too small: {stage}"
    assert (drawn["x"] - stage["x"]) / stage["width"] == pytest.approx(
        heatmap["box"]["x"] / image["width"], abs=0.02
    )
    assert (drawn["y"] - stage["y"]) / stage["height"] == pytest.approx(
        heatmap["box"]["y"] / image["height"], abs=0.02
    )
    assert drawn["width"] / stage["width"] == pytest.approx(heatmap["box"]["w"] / image["width"], abs=0.02)
    page.screenshot(path=str(shots / "study-heatmap.png"), full_page=True)
    assert_png(shots / "study-heatmap.png")
    toggle.uncheck()
    expect(page.locator(".heat-layer")).to_have_count(0)
    expect(page.locator(".heat-box")).to_have_count(0)

    # any other finding's heatmap, drawn on demand from the table
    request = page.locator("#findings-table .heatmap-request").first
    other = request.get_attribute("data-finding")
    request.click()
    other_toggle = page.locator(f'#findings-table .heatmap-toggle[data-finding="{other}"]')
    expect(other_toggle).to_be_checked(timeout=WAIT_MS)
    other_layer = page.locator(f'.heat-layer[data-finding="{other}"]')
    expect(other_layer).to_be_visible()
    wait_for(
        lambda: other_layer.evaluate("img => img.complete && img.naturalWidth > 0"),
        30,
        what="on-demand layer",
    )
    after = study_json(server, top["id"])
    assert other in {h["finding"] for h in after["heatmaps"]}

    # reader status, on the page and in the API
    page.click("#mark-reading")
    expect(page.locator("#read-status")).to_have_text("reading")
    assert study_json(server, top["id"])["read_status"] == "reading"
    page.click("#mark-read")
    expect(page.locator("#read-status")).to_have_text("read")
    expect(page.locator("#mark-read")).to_be_disabled()
    assert study_json(server, top["id"])["read_status"] == "read"
    page.reload()
    expect(page.locator("#read-status")).to_have_text("read")

    page.goto(server.url + "/?status=read")
    expect(page.locator("#worklist-body tr")).to_have_count(1)
    assert row_ids(page) == [top["id"]]
    expect(page.locator("#worklist-body .badge")).to_have_text("read")


def test_unknown_study_page_is_a_clear_404(server):
    response = httpx.get(server.url + "/studies/nope", headers={"Accept": "text/html"}, timeout=30)
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "no study" in response.text and "nope" in response.text
    # a filter the model does not know is named on the page, and the worklist shows unfiltered
    response = httpx.get(server.url + "/", params={"finding": "Nonsense", "status": "bogus"}, timeout=30)
    assert response.status_code == 200
    assert "unknown finding &#39;Nonsense&#39;" in response.text
    assert "unknown reader status &#39;bogus&#39;" in response.text


def test_api_docs_render_without_a_cdn(server, page, shots):
    """/docs is Swagger UI served by the service itself: it renders with no outside network."""
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(server.url) else outside.append(r.url))
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/api/v1/images" in p for p in paths)
    assert outside == [], f"/docs fetched from outside the service: {outside}"
    page.screenshot(path=str(shots / "api-docs.png"))


def corrupt_png(data: bytes) -> bytes:
    """The PNG with its pixel data zeroed but every chunk checksum right: it passes the upload
    check (structure) and fails when the worker decodes it."""
    out, pos = [data[:8]], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            body = bytes(len(body))
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
        pos += 12 + length
    return b"".join(out)


def test_a_study_that_cannot_be_read_shows_its_error(uploaded, server, page, shared_data):
    image = nih_images(shared_data, N_NIH + 2, 1)[0]
    response = httpx.post(
        server.url + "/api/v1/images",
        files={"files": ("broken.png", corrupt_png(image.read_bytes()), "image/png")},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    study_id = response.json()["study_ids"][0]
    study = wait_for(lambda: (d := study_json(server, study_id))["state"] == "error" and d, 30, what="error")
    page.goto(server.url + "/")
    row = page.locator(f'#worklist-body tr[data-study-id="{study_id}"]')
    expect(row.locator(".processing .state")).to_have_text("error")
    expect(row.locator(".processing .error")).to_contain_text("corrupt")
    expect(row.locator("td.rank")).to_have_text("–")
    assert row_ids(page)[-1] == study_id  # after every triaged study
    page.goto(server.url + study["url"])
    expect(page.locator("#study-error")).to_be_visible()
    expect(page.locator("#study-error")).to_contain_text(study["error"])
    expect(page.locator(".stage .error")).to_contain_text("cannot be shown")
    expect(page.locator("#findings-body")).to_contain_text("No findings")


DROP_FILE_JS = """([name, b64]) => {
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, {type: "image/png"}));
  return transfer;
}"""


def test_token_protected_pages_need_sign_in(browser, tmp_path_factory, shared_data):
    token = "browser-test-token-0123"
    with running_server(tmp_path_factory.mktemp("serve-token"), token=token) as server:
        context = browser.new_context(viewport={"width": 1200, "height": 800})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/upload")
        assert "/login" in page.url
        page.fill("#token", "not-the-token")
        page.click("#sign-in")
        expect(page.locator(".error")).to_contain_text("not right")
        page.fill("#token", token)
        page.click("#sign-in")
        page.wait_for_url(server.url + "/upload")
        # a file dropped on the zone is uploaded by the page's own request, with the cookie
        image = nih_images(shared_data, N_NIH + 1, 1)[0]
        transfer = page.evaluate_handle(
            DROP_FILE_JS, [image.name, base64.b64encode(image.read_bytes()).decode()]
        )
        page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
        item = page.locator(f'li.upload-item[data-filename="{image.name}"]')
        expect(item).to_have_attribute("data-result", "accepted", timeout=WAIT_MS)
        expect(item).to_have_attribute("data-state", "done", timeout=WAIT_MS)  # polled through the API
        page.click("#nav-worklist")
        expect(page.locator("#worklist-body tr")).to_have_count(1)
        with page.expect_response(lambda r: "/api/v1/worklist" in r.url, timeout=WAIT_MS) as polled:
            pass  # the page's own poll of the API, with the cookie
        assert polled.value.status == 200
        expect(page.locator("#worklist-updated")).not_to_contain_text("Could not")
        assert "/login" not in page.url
        # without the cookie, the API refuses and the pages send the browser to sign in
        assert httpx.get(server.url + "/api/v1/worklist", timeout=30).status_code == 401
        # signing out forgets the cookie: the worklist asks for the token again
        page.click("#nav-signout")
        page.wait_for_url(server.url + "/login")
        page.goto(server.url + "/")
        assert "/login" in page.url
        context.close()
        assert not errors, f"JavaScript errors: {errors}"


def test_pacs_fields_warnings_and_a_reopened_study_on_the_pages(
    uploaded, server, page, shared_data, tmp_path
):
    """The pages show the DICOM fields that match the PACS (with a switch that hides the
    patient's on a shared screen), a low-resolution warning, and new images after "read"."""
    import pydicom

    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.PatientID, ds.AccessionNumber, ds.PatientAge, ds.PatientSex = "PAT-BROWSER-1", "ACC-77", "052Y", "F"
    images = []
    for i in range(2):
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / f"{i}.dcm")
        images.append((tmp_path / f"{i}.dcm").read_bytes())
    post = lambda name, data: httpx.post(  # noqa: E731
        server.url + "/api/v1/images", files={"files": (name, data)}, timeout=30
    ).json()
    study_id = post("first.dcm", images[0])["study_ids"][0]
    small = sorted((shared_data / "nih" / "images-64").glob("*.png"))[0]
    small_id = post("small.png", small.read_bytes())["study_ids"][0]
    for sid in (study_id, small_id):
        wait_for(lambda sid=sid: study_json(server, sid)["state"] == "done", 120, what="triage")

    page.goto(server.url + "/")
    row = page.locator(f'#worklist-body tr[data-study-id="{study_id}"]')
    patient = row.locator('.identifier[data-field="patient_id"]')
    expect(patient).to_have_text("PAT-BROWSER-1")
    expect(row.locator("td.patient")).to_contain_text("ACC-77")
    expect(row.locator("td.patient")).to_contain_text("52 y F")
    expect(row.locator("td.exam")).to_contain_text("CHEST PA")
    small_row = page.locator(f'#worklist-body tr[data-study-id="{small_id}"]')
    expect(small_row.locator(".warning-badge")).to_contain_text("low resolution: 64x64 px")
    # hidden = drawn at font size 0 (a "hidden" placeholder stands in its place)
    font = "e => getComputedStyle(e).fontSize"
    assert patient.evaluate(font) != "0px"
    page.check("#hide-identifiers")  # a shared screen: the patient's fields go
    wait_for(lambda: patient.evaluate(font) == "0px", 10, what="the identifier to be hidden")
    assert row.locator('.identifier[data-field="accession"]').evaluate(font) == "0px"
    expect(row.locator("td.exam")).to_contain_text("CHEST PA")  # not an identifier
    page.reload()  # the choice stays in this browser
    expect(page.locator("#hide-identifiers")).to_be_checked()
    assert patient.evaluate(font) == "0px"
    page.uncheck("#hide-identifiers")

    page.goto(server.url + f"/studies/{small_id}")
    expect(page.locator("#study-warnings")).to_be_visible()
    expect(page.locator("#study-warnings")).to_contain_text("low resolution: 64x64 px")
    expect(page.locator("figcaption .warning-text")).to_contain_text("low resolution")

    # read, then a new image arrives: the study is new again, and says why
    page.goto(server.url + f"/studies/{study_id}")
    expect(page.locator("#study-facts")).to_contain_text("PAT-BROWSER-1")
    page.click("#mark-read")
    expect(page.locator("#read-status")).to_have_text("read")
    expect(page.locator("#study-new-images")).to_be_hidden()
    post("second.dcm", images[1])
    page.goto(server.url + "/")
    expect(row.locator(".read-status .badge")).to_have_text("new")
    expect(row.locator(".new-images")).to_contain_text("new images since read")
    page.goto(server.url + f"/studies/{study_id}")
    expect(page.locator("#study-new-images")).to_be_visible()
    expect(page.locator("#study-new-images")).to_contain_text("New images arrived after this study was read")
