"""The DICOM node end to end: dcmtk storescu -> ``xraytriage serve --dicom-port`` -> triage ->
Secondary Captures + structured report -> a real Orthanc, read back over its REST API."""

from __future__ import annotations

import io

import httpx
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pacs import (
    dciodvfy_errors,
    dicom_copy,
    echoscu,
    findings_in,
    orthanc,
    require_tools,
    storescu,
    write_image,
)
from serve_support import refused_port, running_server, wait_for
from xraytriage.serving.dicom_node import SC_SERIES_NUMBER, SR_SERIES_NUMBER

pytestmark = pytest.mark.slow  # a real server process (system test); make test-fast leaves it out

QUIET_SECONDS = 3.0


@pytest.fixture(scope="module")
def pacs_and_node(tmp_path_factory):
    require_tools("storescu", "echoscu")
    tmp = tmp_path_factory.mktemp("pacs")
    with orthanc(tmp / "orthanc") as pacs:
        args = [
            "--dicom-port",
            "0",  # the node binds any free port and reports it (/healthz): no port to lose in between
            "--ae-title",
            "XRAYTRIAGE",
            "--dicom-allow",
            "STORESCU,ECHOSCU",
            "--dicom-destination",
            f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}",
            "--dicom-quiet-seconds",
            str(QUIET_SECONDS),
            "--heatmap-findings",
            "2",
            "--dicom-sc-jpeg",
        ]
        with running_server(tmp / "serve", *args) as server, server.client() as http:
            dicom_port = http.get("/healthz").json()["dicom"]["port"]
            assert dicom_port > 0
            yield pacs, server, dicom_port


def received_study(http: httpx.Client):
    items = http.get("/api/v1/worklist").json()["items"]
    dicom = [i for i in items if i["source"] == "dicom"]
    return dicom[0] if dicom and dicom[0]["dicom_results_state"] in ("sent", "error", "kept") else None


def test_echo(pacs_and_node) -> None:
    _, _, port = pacs_and_node
    code, output = echoscu(port)
    assert code == 0, output


def test_received_study_is_triaged_and_results_reach_the_pacs(pacs_and_node, shared_data, tmp_path) -> None:
    pacs, server, port = pacs_and_node
    siim = shared_data / "dicom" / "siim_cr_chest_pa.dcm"
    source = pydicom.dcmread(siim, stop_before_pixels=True)
    # one study: the real file, the same instance again uncompressed (it replaces the first copy)
    # and the MONOCHROME1 copy as another instance. storescu skips a second file with the same
    # SOP Instance UID in one call, hence one call each.
    sent = [
        siim,
        dicom_copy(siim, tmp_path / "explicit.dcm", ExplicitVRLittleEndian),
        dicom_copy(
            shared_data / "dicom" / "cr_chest_pa_monochrome1.dcm", tmp_path / "m1.dcm", new_instance=True
        ),
    ]
    for path in sent:
        code, output = storescu(port, [path])
        assert code == 0, output

    with server.client() as http:
        summary = wait_for(lambda: received_study(http), timeout=120, what="results sent to Orthanc")
        study = http.get(f"/api/v1/studies/{summary['id']}").json()
    assert study["state"] == "done" and study["dicom_results_state"] == "sent", study["dicom_results_info"]
    assert study["name"].startswith("CR")  # received studies appear in the worklist like uploads
    assert len(study["image_list"]) == 2 and study["source"] == "dicom"  # one per SOP instance

    # Read back what Orthanc stored: only our results were sent to it, in the source study.
    instances = pacs.get_json("/instances")
    tags = {i: pacs.get_json(f"/instances/{i}/simplified-tags") for i in instances}
    assert {t["StudyInstanceUID"] for t in tags.values()} == {source.StudyInstanceUID}
    by_modality: dict[str, list[str]] = {}
    for instance, t in tags.items():
        by_modality.setdefault(t["Modality"], []).append(instance)
    flagged = [row for row in study["findings_table"] if row["flagged"]]
    assert len(by_modality.get("OT", [])) == min(2, len(flagged)) and len(by_modality["SR"]) == 1
    for instance in by_modality.get("OT", []):
        assert int(tags[instance]["SeriesNumber"]) == SC_SERIES_NUMBER
        assert tags[instance]["BurnedInAnnotation"] == "YES"
        assert tags[instance]["PatientID"] == source.PatientID
        syntax = pacs.get(f"/instances/{instance}/metadata/TransferSyntax").decode().strip()
        assert syntax == "1.2.840.10008.1.2.4.50"  # --dicom-sc-jpeg: JPEG Baseline

    sr = pydicom.dcmread(io.BytesIO(pacs.get(f"/instances/{by_modality['SR'][0]}/file")))
    assert int(sr.SeriesNumber) == SR_SERIES_NUMBER and sr.VerificationFlag == "UNVERIFIED"
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    reported = findings_in(sr)
    expected = {row["name"]: row for row in study["findings_table"] if row["is_finding"]}
    assert set(reported) == {*expected, "Abnormal"}
    assert reported["Abnormal"]["Probability"] == pytest.approx(study["abnormal"], abs=1e-4)
    for name, row in expected.items():
        assert reported[name]["Probability"] == pytest.approx(row["probability"], abs=1e-4)
        assert reported[name]["At or above operating threshold"] == ("Yes" if row["flagged"] else "No")

    # every SC and SR, as the PACS stored it, passes dicom3tools' IOD validator without an error
    require_tools("dciodvfy")
    errors = {}
    for instance in (*by_modality.get("OT", []), *by_modality["SR"]):
        path = tmp_path / f"{tags[instance]['Modality']}-{instance}.dcm"
        path.write_bytes(pacs.get(f"/instances/{instance}/file"))
        found = dciodvfy_errors(path)
        if found:
            errors[path.name] = found
    assert errors == {}


def test_ct_is_refused_with_a_status_and_the_node_carries_on(pacs_and_node, tmp_path) -> None:
    _, server, port = pacs_and_node
    ct = write_image(tmp_path / "ct.dcm", "1.2.840.10008.5.1.4.1.1.2", "CT", "CHEST")
    _code, output = storescu(port, [ct])
    assert "error: cannotunderstand" in output.lower(), output
    assert echoscu(port)[0] == 0
    assert server.running
    with server.client() as http:
        names = [i["name"] for i in http.get("/api/v1/worklist").json()["items"]]
    assert not any("CT" in n.split() for n in names)


def test_unknown_calling_ae_is_rejected(pacs_and_node, shared_data) -> None:
    _, _, port = pacs_and_node
    code, output = storescu(port, [shared_data / "dicom" / "siim_cr_chest_pa.dcm"], calling_ae="STRANGER")
    assert code != 0 and "reject" in output.lower(), output


def test_a_wrong_called_ae_title_is_rejected(pacs_and_node) -> None:
    _, _, port = pacs_and_node
    code, output = echoscu(port, called_ae="SOMEBODY_ELSE")
    assert code != 0 and "Called AE Title Not Recognized" in output, output
    assert echoscu(port)[0] == 0  # ours (--ae-title XRAYTRIAGE) still answers


def test_dicom_echo_command(pacs_and_node) -> None:
    from xraytriage.cli.main import main

    pacs, _, _ = pacs_and_node
    assert main(["dicom-echo", f"{pacs.ae_title}@127.0.0.1:{pacs.dicom_port}"]) == 0
    with refused_port() as port:  # held by this test, not listening: nobody can answer there
        assert main(["dicom-echo", f"{pacs.ae_title}@127.0.0.1:{port}", "--timeout", "2"]) == 1
