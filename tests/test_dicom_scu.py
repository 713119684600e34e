"""Sending SC + SR results to a real Orthanc and reading them back over its REST API."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacs import findings_in, orthanc, radiograph_overlay, require_tools
from serve_support import refused_port
from xraytriage.dicom import (
    Destination,
    FindingResult,
    ModelInfo,
    build_secondary_capture,
    build_structured_report,
    echo,
    send_datasets,
)

MODEL = ModelInfo("densenet121-nih", "1.2.0")
FINDINGS = [FindingResult("Pneumothorax", 0.82, 0.40), FindingResult("Effusion", 0.10, 0.30)]


@pytest.fixture(scope="module")
def pacs_server(tmp_path_factory):
    require_tools("Orthanc")
    with orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def destination(pacs_server) -> Destination:
    return Destination(pacs_server.ae_title, "127.0.0.1", pacs_server.dicom_port)


@pytest.mark.slow  # a real Orthanc
def test_echo_orthanc(destination):
    assert echo(destination)


@pytest.mark.slow  # a real Orthanc
def test_send_sc_and_sr_to_orthanc_and_read_them_back(pacs_server, destination, shared_data):
    path = shared_data / "dicom" / "siim_cr_chest_pa.dcm"
    source = pydicom.dcmread(path)
    sc_series, sr_series = generate_uid(), generate_uid()
    sc = build_secondary_capture(
        source, radiograph_overlay(path), "Pneumothorax 0.82", sc_series, 901, 1, MODEL
    )
    sr = build_structured_report([source], FINDINGS, MODEL, sr_series, 902, 1, abnormal=0.7)

    results = send_datasets([sc, sr], destination, calling_ae="XRAYTRIAGE")

    assert [r.sop_instance_uid for r in results] == [sc.SOPInstanceUID, sr.SOPInstanceUID]
    assert all(r.ok and r.status == 0 for r in results), results
    stored = {}
    for instance_id in pacs_server.get_json("/instances"):
        tags = pacs_server.get_json(f"/instances/{instance_id}/simplified-tags")
        stored[tags["SOPInstanceUID"]] = (instance_id, tags)
    assert set(stored) >= {sc.SOPInstanceUID, sr.SOPInstanceUID}

    sc_id, sc_tags = stored[sc.SOPInstanceUID]
    assert sc_tags["StudyInstanceUID"] == source.StudyInstanceUID
    assert sc_tags["SeriesInstanceUID"] == sc_series and sc_tags["Modality"] == "OT"
    assert sc_tags["PatientID"] == source.PatientID and sc_tags["BurnedInAnnotation"] == "YES"
    sc_back = pydicom.dcmread(io.BytesIO(pacs_server.get(f"/instances/{sc_id}/file")))
    np.testing.assert_array_equal(sc_back.pixel_array, sc.pixel_array)

    sr_id, sr_tags = stored[sr.SOPInstanceUID]
    assert sr_tags["StudyInstanceUID"] == source.StudyInstanceUID
    assert sr_tags["Modality"] == "SR" and sr_tags["VerificationFlag"] == "UNVERIFIED"
    sr_back = pydicom.dcmread(io.BytesIO(pacs_server.get(f"/instances/{sr_id}/file")))
    found = findings_in(sr_back)
    for finding in FINDINGS:
        assert found[finding.name]["Probability"] == pytest.approx(finding.probability)
        assert found[finding.name]["At or above operating threshold"] == ("Yes" if finding.flagged else "No")
    # both results landed in the source's study, in two new series
    study = pacs_server.get_json(f"/instances/{sr_id}/study")
    assert study["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
    assert len(study["Series"]) == 2


def test_dead_destination_gives_failure_results_not_an_exception(shared_data):
    source = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    sr = build_structured_report([source], FINDINGS, MODEL, generate_uid(), 902, 1)
    with refused_port() as port:  # nobody listens there for the whole check
        dead = Destination("NOBODY", "127.0.0.1", port)
        assert not echo(dead, timeout=2)
        [result] = send_datasets([sr], dead, timeout=2)
    assert not result.ok and result.status is None
    assert result.sop_instance_uid == sr.SOPInstanceUID and "NOBODY@127.0.0.1" in result.message
    unresolvable = Destination("NOBODY", "no-such-host.invalid", 104)
    [result] = send_datasets([sr], unresolvable, timeout=2)
    assert not result.ok and result.message


def test_nothing_to_send_makes_no_association():
    with refused_port() as port:
        assert send_datasets([], Destination("NOBODY", "127.0.0.1", port)) == []
