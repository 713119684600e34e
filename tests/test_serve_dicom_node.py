"""The DICOM node's bookkeeping without a network: quiet period, results kept on disk, and an
image that arrives while results are being sent (the end-to-end test with storescu and Orthanc
is test_serve_dicom.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest

from xraytriage.dicom import ReceivedImage
from xraytriage.serving.config import DicomSettings, ServeConfig
from xraytriage.serving.db import Study
from xraytriage.serving.dicom_node import KEPT, PENDING, DicomNode
from xraytriage.serving.service import TriageService

QUIET = 5.0


@pytest.fixture()
def node(tmp_path: Path) -> DicomNode:
    service = TriageService(ServeConfig(data_dir=tmp_path / "data", workers=0, heatmap_findings=2))
    return DicomNode(service, DicomSettings(port=0, quiet_seconds=QUIET), "127.0.0.1")


def receive(node: DicomNode, path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    info = ReceivedImage(
        "MODALITY", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, "CR"
    )
    node.on_image(path.read_bytes(), info)
    while node.service.workers.step():
        pass
    with node.service.db.session() as s:
        return s.query(Study).one().id


def test_results_wait_for_the_quiet_period_and_are_kept(node: DicomNode, shared_data: Path) -> None:
    study_id = receive(node, shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    assert node.ready_studies(time.time()) == []  # an image just arrived
    assert node.ready_studies(time.time() + QUIET + 1) == [study_id]
    assert node.dispatch(study_id) == KEPT
    with node.service.db.session() as s:
        study = s.get(Study, study_id)
        info = json.loads(study.dicom_results_info)
        assert study.dicom_results_state == KEPT and study.calling_ae == "MODALITY"
    files = sorted(Path(info["folder"]).glob("*.dcm"))
    modalities = [pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files]
    assert modalities.count("SR") == 1 and 1 <= modalities.count("OT") <= 2
    assert node.ready_studies(time.time() + QUIET + 1) == []  # sent once


def test_an_image_arriving_during_dispatch_keeps_the_study_pending(
    node: DicomNode, shared_data: Path
) -> None:
    study_id = receive(node, shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    build = node.build_results

    def build_while_another_image_arrives(sid: str):
        datasets = build(sid)
        receive(node, shared_data / "dicom" / "cr_chest_pa_monochrome1.dcm")  # same study
        return datasets

    node.build_results = build_while_another_image_arrives  # type: ignore[method-assign]
    assert node.dispatch(study_id) == PENDING
    with node.service.db.session() as s:
        study = s.get(Study, study_id)
        assert study.dicom_results_state == PENDING and len(study.images) == 2
    assert node.ready_studies(time.time() + QUIET + 1) == [study_id]  # updated results will follow
