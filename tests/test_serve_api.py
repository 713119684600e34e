"""The REST API: the app of ``xraytriage serve`` (same arguments, middleware, service and workers)
run in this process with Starlette's TestClient for the API's behaviour; the real server process
on a loopback port only where the process itself is the point (SIGKILL and restart).

One app per module for the ordinary calls; separate ones for the token and limits, and real
server processes for the crash-and-restart test.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from serve_support import in_process_server, running_server, start_server, wait_for

# in process, but the whole service end to end (uploads triaged by the bundled model, heatmaps
# drawn: about 15 s): the slow tier, so make test-fast keeps its 2-minute budget
pytestmark = pytest.mark.slow

NIH_COUNT = 4
PATIENT_NAME, PATIENT_ID = "DOE^JANE^Q", "PID-3141592"


def nih_files(shared_data: Path, n: int, skip: int = 0) -> list[Path]:
    return sorted((shared_data / "nih" / "images").glob("*.png"))[skip : skip + n]


def part(path: Path, name: str | None = None) -> tuple[str, tuple[str, bytes, str]]:
    return ("files", (name or path.name, path.read_bytes(), "application/octet-stream"))


def dicom_variant(shared_data: Path, tmp_path: Path, name: str, **changes) -> Path:
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    for key, value in changes.items():
        setattr(ds, key, value)
    path = tmp_path / name
    ds.save_as(path)
    return path


def all_done(http: httpx.Client, n: int):
    data = http.get("/api/v1/worklist").json()
    items = data["items"]
    return items if len(items) >= n and all(i["state"] in ("done", "error") for i in items) else None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with in_process_server(tmp_path_factory.mktemp("api"), "--heatmap-findings", "2") as srv:
        yield srv


@pytest.fixture(scope="module")
def uploaded(server, shared_data, tmp_path_factory):
    """Four NIH PNGs, the real DICOM (with a patient name added), a text file and a CT: one request."""
    tmp = tmp_path_factory.mktemp("uploads")
    named = dicom_variant(shared_data, tmp, "chest.dcm", PatientName=PATIENT_NAME, PatientID=PATIENT_ID)
    ct = dicom_variant(shared_data, tmp, "ct.dcm", Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")
    text = tmp / "notes.png"
    text.write_text("not an image, whatever the name says")
    files = [part(p) for p in nih_files(shared_data, NIH_COUNT)]
    files += [part(named), part(text), part(ct)]
    with server.client() as http:
        response = http.post("/api/v1/images", files=files)
        items = wait_for(lambda: all_done(http, NIH_COUNT + 1), timeout=90, what="triage of the uploads")
    return response, items


def test_upload_reports_each_file(uploaded) -> None:
    response, _ = uploaded
    assert response.status_code == 202
    body = response.json()
    assert len(body["accepted"]) == NIH_COUNT + 1 and len(body["study_ids"]) == NIH_COUNT + 1
    rejected = {r["filename"]: r for r in body["rejected"]}
    assert set(rejected) == {"notes.png", "ct.dcm"}
    assert rejected["notes.png"]["status"] == 415 and "by its content" in rejected["notes.png"]["error"]
    assert rejected["ct.dcm"]["status"] == 422 and "modality CT" in rejected["ct.dcm"]["error"]


def test_worklist_is_sorted_by_priority(server, uploaded) -> None:
    _, items = uploaded
    priorities = [i["priority"] for i in items]
    assert priorities == sorted(priorities, reverse=True)
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    with server.client() as http:
        for item in items:
            study = http.get(f"/api/v1/studies/{item['id']}").json()
            assert study["priority"] == item["priority"] and study["rank"] == item["rank"]
            assert study["seconds_to_result"] is not None and study["seconds_to_result"] >= 0


def test_study_detail_and_heatmaps(server, uploaded) -> None:
    _, items = uploaded
    top = next(i for i in items if i["findings"])
    with server.client() as http:
        study = wait_for(
            lambda: (s := http.get(f"/api/v1/studies/{top['id']}").json())["heatmaps_state"] == "done" and s,
            what="heatmaps",
        )
        flagged = [row["name"] for row in study["findings_table"] if row["flagged"]]
        assert flagged == [f["name"] for f in study["findings"]]
        assert [h["finding"] for h in study["heatmaps"]] == flagged[:2]
        image = study["image_list"][0]
        display = Image.open(io.BytesIO(http.get(image["display_url"]).content))
        assert display.size == (image["width"], image["height"])
        heat = study["heatmaps"][0]
        overlay = http.get(heat["url"])
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        picture = np.asarray(Image.open(io.BytesIO(overlay.content)).convert("RGB"))
        # the display image at the top left (heat drawn on it), the legend to its right
        assert picture.shape[0] >= display.size[1] and picture.shape[1] > display.size[0]
        picture = picture[: display.size[1], : display.size[0]]
        assert np.abs(picture.astype(int) - np.asarray(display.convert("RGB")).astype(int)).mean() > 1
        layer = Image.open(io.BytesIO(http.get(heat["layer_url"]).content))
        assert layer.mode == "RGBA" and np.asarray(layer)[..., 3].max() > 0
        # a finding that was not drawn ahead of time is drawn on request
        other = next(r["name"] for r in study["findings_table"] if r["is_finding"] and not r["flagged"])
        assert http.get(f"/api/v1/studies/{top['id']}/heatmaps/{other}.png").status_code == 200
        after = http.get(f"/api/v1/studies/{top['id']}").json()
        assert other in [h["finding"] for h in after["heatmaps"]]


def test_errors_are_json_and_clear(server, uploaded) -> None:
    _, items = uploaded
    with server.client() as http:
        cases = [
            (http.get("/api/v1/studies/nope"), 404, "no study 'nope'"),
            (
                http.get(f"/api/v1/studies/{items[0]['id']}/heatmaps/Banana.png"),
                404,
                "unknown finding 'Banana'",
            ),
            (http.patch(f"/api/v1/studies/{items[0]['id']}", json={"status": "done-ish"}), 422, "status"),
            (http.post("/api/v1/images", files=[("files", ("a.txt", b"hello", "text/plain"))]), 415, "a.txt"),
            (http.post("/api/v1/images", data={"study": "x"}), 422, "files"),
        ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        body = response.json()
        assert body["status"] == status and words in body["error"]


def test_mark_read_and_filter(server, uploaded) -> None:
    _, items = uploaded
    target = items[1]["id"]
    with server.client() as http:
        changed = http.patch(f"/api/v1/studies/{target}", json={"status": "read"})
        assert changed.status_code == 200 and changed.json()["read_status"] == "read"
        read = http.get("/api/v1/worklist", params={"status": "read"}).json()["items"]
        assert [i["id"] for i in read] == [target] and read[0]["rank"] == 2
        flagged = [i for i in items if i["findings"]]
        assert flagged, "no uploaded study has a finding above its threshold"
        finding = flagged[0]["findings"][0]["name"]
        listed = http.get("/api/v1/worklist", params={"finding": finding.lower()}).json()["items"]
        assert flagged[0]["id"] in [i["id"] for i in listed]
        assert all(finding in [f["name"] for f in i["findings"]] for i in listed)
        http.patch(f"/api/v1/studies/{target}", json={"status": "new"})


def test_worklist_csv_matches_json(server, uploaded) -> None:
    _, items = uploaded
    with server.client() as http:
        response = http.get("/api/v1/worklist.csv")
        model = http.get("/api/v1/model").json()
        labels = model["labels"]
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["study_id"] for r in rows] == [i["id"] for i in items]
    # the study flag: P(abnormal) at or above the model's study threshold, same in CSV and JSON
    flag_at = model["study_flag_threshold"]
    assert flag_at is not None
    assert [i["flagged"] for i in items] == [i["abnormal"] >= flag_at for i in items]
    assert [r["flagged"] for r in rows] == [str(i["flagged"]) for i in items]
    assert set(labels) <= set(rows[0])
    assert float(rows[0]["priority"]) == pytest.approx(items[0]["priority"], abs=1e-6)


def test_same_file_twice_is_one_study(server, shared_data) -> None:
    path = nih_files(shared_data, 1)[0]
    with server.client() as http:
        again = http.post("/api/v1/images", files=[part(path, "another name.png")]).json()
        total = http.get("/api/v1/worklist").json()["total"]
    assert again["accepted"][0]["duplicate"] is True
    assert total == NIH_COUNT + 1


def test_file_names_cannot_escape(server, shared_data, tmp_path) -> None:
    path = nih_files(shared_data, 1, skip=10)[0]
    with server.client() as http:
        body = http.post("/api/v1/images", files=[part(path, "../../../../tmp/evil.png")]).json()
    assert body["accepted"][0]["filename"] == "evil.png"
    stored = [p for p in server.data_dir.rglob("*") if "evil" in p.name]
    assert stored == [] and not (server.data_dir.parent / "evil.png").exists()


def test_docs_and_health(server) -> None:
    with server.client() as http:
        assert http.get("/healthz").json()["status"] == "ok"
        # warmed up in the background: the explainer is built before the first study needs it
        wait_for(lambda: http.get("/healthz").json()["ready"], what="warm-up")
        assert "swagger" in http.get("/docs").text.lower()
        paths = http.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/images", "/api/v1/worklist", "/api/v1/studies/{study_id}"):
        assert path in paths


def test_patient_identifiers_stay_out_of_the_log(server, uploaded) -> None:
    log = server.log()
    assert "queued image" in log  # the log is being written
    for secret in (PATIENT_NAME, "DOE", PATIENT_ID):
        assert secret not in log


# --- separate servers -------------------------------------------------------------------------


def test_token_and_limits(tmp_path, shared_data) -> None:
    token = "s3cret-token-for-tests"
    path = nih_files(shared_data, 1)[0]
    limit_mb = (path.stat().st_size - 1) / (1024 * 1024)
    with (
        in_process_server(
            tmp_path, "--max-upload-mb", f"{limit_mb:.6f}", "--max-files", "2", token=token
        ) as srv,
        srv.client(token=False) as open_http,
    ):
        assert open_http.get("/healthz").status_code == 200
        denied = open_http.get("/api/v1/worklist")
        assert denied.status_code == 401 and "token" in denied.json()["error"]
        assert denied.headers["www-authenticate"] == "Bearer"
        wrong = open_http.get("/api/v1/worklist", headers={"Authorization": "Bearer wrong-token"})
        assert wrong.status_code == 401
        page = open_http.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        with srv.client() as http:
            assert http.get("/api/v1/worklist").status_code == 200
            too_big = http.post("/api/v1/images", files=[part(path)])
            assert too_big.status_code == 413 and "over the limit" in too_big.json()["error"]
            too_many = http.post("/api/v1/images", files=[part(path, f"{i}.png") for i in range(3)])
            assert too_many.status_code == 413 and "limit is 2" in too_many.json()["error"]


def test_nothing_acknowledged_is_lost_when_killed(tmp_path, shared_data) -> None:
    files = nih_files(shared_data, 24, skip=20)
    data_dir = tmp_path / "data"
    # 1. acknowledged while nothing processes, then SIGKILL
    first = start_server(tmp_path / "a", "--workers", "0", data_dir=data_dir)
    with first.client() as http:
        body = http.post("/api/v1/images", files=[part(p) for p in files[:8]]).json()
    first.kill()
    ids = set(body["study_ids"])
    assert len(ids) == 8
    # 2. a new server processes them; it is killed in the middle of the next batch
    second = start_server(
        tmp_path / "b", "--workers", "1", "--batch-size", "2", "--no-heatmaps", data_dir=data_dir
    )
    with second.client() as http:
        body = http.post("/api/v1/images", files=[part(p) for p in files[8:]]).json()
        ids |= set(body["study_ids"])
        # the API answers while the batch is being worked on
        assert http.get("/healthz").status_code == 200
        assert http.get("/api/v1/worklist").status_code == 200
    second.kill()
    assert len(ids) == len(files)
    # 3. after the restart every acknowledged image ends up triaged
    with running_server(tmp_path / "c", "--no-heatmaps", data_dir=data_dir) as third, third.client() as http:
        items = wait_for(lambda: all_done(http, len(files)), timeout=90, what="recovery")
    assert {i["id"] for i in items} == ids
    assert all(i["state"] == "done" for i in items)
