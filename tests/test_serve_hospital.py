"""The service as a hospital uses it and an attacker probes it (the serve app in process, through
every middleware: nothing here needs a server process): uploads racing into one
study, clinical scope, PACS fields (and hiding them), security headers, the Host check (DNS
rebinding), the session cookie and the wrong-token limit."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import httpx
import pydicom
import pytest

from serve_support import in_process_server, wait_for

# in process, but a started service that triages uploads with the bundled model (about 9 s at
# load 8): the slow tier, so make test-fast keeps its 2-minute budget
pytestmark = pytest.mark.slow

PATIENT_ID, ACCESSION = "PID-27182818", "ACC-16180339"


def chest_dicom(shared_data: Path, folder: Path, name: str, study_uid: str, **changes) -> tuple[str, bytes]:
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    ds.StudyInstanceUID, ds.SOPInstanceUID = study_uid, pydicom.uid.generate_uid()
    ds.PatientID, ds.AccessionNumber = PATIENT_ID, ACCESSION
    ds.PatientAge, ds.PatientSex, ds.StudyDate = "067Y", "M", "20231224"
    for key, value in changes.items():
        setattr(ds, key, value)
    path = folder / name
    ds.save_as(path)
    return name, path.read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # --no-route: the single-model service, whose scope check refuses a hand header (routed: test_serve_routing)
    with in_process_server(tmp_path_factory.mktemp("hospital"), "--no-heatmaps", "--no-route") as srv:
        yield srv


def test_uploads_of_one_study_at_the_same_moment(server, shared_data, tmp_path) -> None:
    """Two images of one DICOM study uploaded at once: HTTP 500 (UNIQUE studies.id) before."""
    study_uid = pydicom.uid.generate_uid()
    files = [chest_dicom(shared_data, tmp_path, f"view{i}.dcm", study_uid) for i in range(4)]
    barrier = threading.Barrier(len(files))
    answers: list[httpx.Response | None] = [None] * len(files)

    def send(i: int) -> None:
        with server.client() as http:
            barrier.wait()
            answers[i] = http.post("/api/v1/images", files=[("files", (files[i][0], files[i][1]))])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [a.status_code for a in answers] == [202] * len(files), [a.text for a in answers]
    (study_id,) = {a.json()["study_ids"][0] for a in answers}
    with server.client() as http:
        study = wait_for(
            lambda: (s := http.get(f"/api/v1/studies/{study_id}").json())["state"] == "done" and s,
            timeout=120,
            what="the study to be triaged",
        )
        assert study["images"] == len(files) and study["rank"] is not None
        # PACS matching: the worklist, the study and the CSV show the DICOM fields
        item = next(i for i in http.get("/api/v1/worklist").json()["items"] if i["id"] == study_id)
        rows = list(csv.DictReader(io.StringIO(http.get("/api/v1/worklist.csv").text)))
    for shown in (study, item):
        assert (shown["patient_id"], shown["accession"]) == (PATIENT_ID, ACCESSION)
        assert (shown["patient_age"], shown["patient_sex"], shown["study_date"]) == (
            "67 y",
            "M",
            "2023-12-24",
        )
        assert (shown["view"], shown["body_part"]) == ("PA", "CHEST")
    row = next(r for r in rows if r["study_id"] == study_id)
    assert (row["patient_id"], row["accession"], row["patient_age"], row["view"]) == (
        PATIENT_ID,
        ACCESSION,
        "67 y",
        "PA",
    )
    log = server.log()  # shown to the reader, never written to the log
    assert "queued image" in log and PATIENT_ID not in log and ACCESSION not in log


def test_out_of_scope_uploads_are_refused_and_small_images_flagged(server, shared_data, tmp_path) -> None:
    """A hand and a lateral chest got chest findings before; a 64 px image had no caveat."""
    uid = pydicom.uid.generate_uid()
    hand = chest_dicom(shared_data, tmp_path, "hand.dcm", uid, BodyPartExamined="HAND")
    lateral = chest_dicom(shared_data, tmp_path, "lateral.dcm", uid, ViewPosition="LL")
    small = sorted((shared_data / "nih" / "images-64").glob("*.png"))[0]
    with server.client() as http:
        refused = http.post("/api/v1/images", files=[("files", hand), ("files", lateral)])
        assert refused.status_code == 422
        reasons = {r["filename"]: r["error"] for r in refused.json()["rejected"]}
        assert reasons["hand.dcm"].startswith("out of scope: body part HAND")
        assert reasons["lateral.dcm"].startswith("out of scope: view LL, left lateral")
        assert all("this model reads CHEST radiographs, PA or AP views only" in r for r in reasons.values())
        accepted = http.post("/api/v1/images", files=[("files", ("small.png", small.read_bytes()))]).json()
        warning = "low resolution: 64x64 px, smaller than the model's 128 px input"
        assert accepted["accepted"][0]["warnings"] == [warning]
        study_id = accepted["study_ids"][0]
        study = wait_for(
            lambda: (s := http.get(f"/api/v1/studies/{study_id}").json())["state"] == "done" and s,
            timeout=120,
            what="the small image",
        )
    assert study["warnings"] == [warning] and study["image_list"][0]["warning"] == warning


def test_security_headers_on_pages_api_and_docs(server) -> None:
    with server.client() as http:
        for path in ("/", "/upload", "/api/v1/worklist", "/login", "/static/app.css"):
            headers = http.get(path).headers
            policy = headers["content-security-policy"]
            assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, path
            assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
        docs = http.get("/docs").headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in docs and "'unsafe-eval'" not in docs


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "attacker.localhost"]
)
def test_a_foreign_host_header_is_refused_without_a_token(server, host) -> None:
    """DNS rebinding: a page on a name the attacker points at 127.0.0.1 must get nothing."""
    with server.client() as http:
        for path in ("/api/v1/worklist", "/", "/healthz"):
            answer = http.get(path, headers={"Host": host})
            assert answer.status_code == 400 and "DNS rebinding" in answer.json()["error"], path
        port = server.url.rsplit(":", 1)[1]
        for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert http.get("/api/v1/worklist", headers={"Host": good}).status_code == 200, good


def test_token_sessions_limit_and_hidden_identifiers(tmp_path, shared_data) -> None:
    token = "a-long-enough-secret-token"
    args = ("--no-heatmaps", "--hide-identifiers", "--allowed-host", "triage.hospital.example")
    name, data = chest_dicom(shared_data, tmp_path, "chest.dcm", pydicom.uid.generate_uid())
    with in_process_server(tmp_path, *args, token=token) as srv:
        port = srv.url.rsplit(":", 1)[1]
        with srv.client() as http:  # --hide-identifiers: the API and the CSV never carry them
            study_id = http.post("/api/v1/images", files=[("files", (name, data))]).json()["study_ids"][0]
            study = http.get(f"/api/v1/studies/{study_id}").json()
            listing = http.get("/api/v1/worklist").json()
            text = http.get("/api/v1/worklist.csv").text
        assert study["identifiers_hidden"] and listing["identifiers_hidden"]
        assert study["patient_id"] is None and study["accession"] is None and study["patient_age"] is None
        assert study["view"] == "PA" and study["body_part"] == "CHEST"
        assert PATIENT_ID not in text and ACCESSION not in text and PATIENT_ID not in str(listing)

        with srv.client(token=False) as http:
            # the Host check follows --allowed-host when a token is set
            assert (
                http.get("/healthz", headers={"Host": f"triage.hospital.example:{port}"}).status_code == 200
            )
            assert http.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
            # the cookie is a signed session, not the token
            signed_in = http.post("/login", data={"token": token, "next": "/"})
            assert signed_in.status_code == 303
            cookie = http.cookies["xraytriage_session"]
            assert token not in cookie and cookie.count(".") == 2
            assert http.get("/api/v1/worklist").status_code == 200
            assert http.get("/logout").status_code == 303
            with srv.client(token=False, cookies={"xraytriage_session": cookie}) as other:
                replayed = other.get("/api/v1/worklist")
            assert replayed.status_code == 401  # signed out: a copy of the cookie is dead too
            with srv.client(token=False, cookies={"xraytriage_session": token}) as other:
                forged = other.get("/api/v1/worklist")
            assert forged.status_code == 401  # the raw token is not a session
            # wrong tokens: a few are answered, then 429 without checking any token
            codes = [
                http.post("/login", data={"token": f"guess-{i}", "next": "/"}).status_code for i in range(5)
            ]
            assert codes == [401] * 5
            limited = http.post("/login", data={"token": token, "next": "/"})
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
            bearer = http.get("/api/v1/worklist", headers={"Authorization": f"Bearer {token}"})
            assert bearer.status_code == 429 and "too many wrong tokens" in bearer.json()["error"]
