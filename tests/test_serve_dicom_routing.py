"""The DICOM node routes as the upload API does: a hand film received over DICOM (header
BodyPartExamined HAND) is accepted instead of refused, scored by the fracture model, and its
SR names the body part (Target Region: SNOMED CT Hand), the fracture model as the device
observer and the Fracture finding as SNOMED CT "Fracture of bone"; a chest film's SR names the
chest and the chest model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from pacs import sr_content_items, write_image
from test_serve_routing import ASSETS, mixed_films
from xraytriage.dicom import ReceivedImage
from xraytriage.serving.config import DicomSettings, ServeConfig
from xraytriage.serving.db import Study
from xraytriage.serving.dicom_node import KEPT, DicomNode
from xraytriage.serving.service import TriageService

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
pytestmark = pytest.mark.skipif(
    not (ASSETS / "body_part_router" / "model.pt").is_file()
    or not (ASSETS / "fracture_model" / "model.pt").is_file(),
    reason="bundled router/fracture model absent",
)


def dicom_of(picture: Path, target: Path, body_part: str) -> Path:
    """A CR DICOM holding a real film's pixels (8-bit MONOCHROME2) with ``body_part`` in its header."""
    pixels = np.asarray(PILImage.open(picture).convert("L"), dtype=np.uint8)
    return write_image(target, CR_IMAGE_STORAGE, "CR", body_part=body_part, pixels=pixels)


def receive(node: DicomNode, path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    info = ReceivedImage(
        "MODALITY", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID, "CR"
    )
    node.on_image(path.read_bytes(), info)
    while node.service.workers.step():
        pass
    with node.service.db.session() as s:
        return s.query(Study).filter(Study.study_uid == ds.StudyInstanceUID).one().id


def coded_values(ds) -> list[tuple[str, str, str]]:
    """(scheme, code, meaning) of every coded value and concept name in the SR's content tree."""
    out = []
    for item in ds.get("ContentSequence", []):
        for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            for code in item.get(key, []):
                value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
                out.append((code.CodingSchemeDesignator, str(value), code.CodeMeaning))
        out.extend(coded_values(item))
    return out


def test_the_dicom_node_routes_and_the_sr_names_body_part_and_model(tmp_path, shared_data):
    chest, hand = mixed_films(shared_data)
    config = ServeConfig(data_dir=tmp_path / "data", workers=0, heatmap_findings=1, route=True)
    node = DicomNode(TriageService(config), DicomSettings(port=0, quiet_seconds=0.0), "127.0.0.1")
    hand_id = receive(node, dicom_of(hand, tmp_path / "hand.dcm", "HAND"))
    chest_id = receive(node, dicom_of(chest, tmp_path / "chest.dcm", "CHEST"))
    fracture_ckpt = node.service.checkpoint_of("fracture")
    reports = {}
    for study_id in (hand_id, chest_id):
        study = node.service.repo.study(study_id)
        assert study.state == "done", study.error
        assert node.dispatch(study_id) == KEPT
        folder = Path(node.service.repo.study(study_id).dicom_results_info["folder"])
        files = sorted(folder.glob("*.dcm"))
        modalities = {f: pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files}
        (sr_path,) = [f for f, m in modalities.items() if m == "SR"]
        reports[study_id] = (study, pydicom.dcmread(sr_path), list(modalities.values()))
    study, sr, modalities = reports[hand_id]
    assert (study.body_part, study.model) == ("HAND", "fracture")
    assert modalities == ["SR"]  # no heatmap pictures: only the chest model draws them
    items = dict(sr_content_items(sr))
    assert items["Target Region"] == "Hand"
    codes = coded_values(sr)
    assert ("SCT", "85562004", "Hand") in codes and ("SCT", "125605004", "Fracture of bone") in codes
    assert (
        sr.ManufacturerModelName == fracture_ckpt.name
        and sr.SoftwareVersions == fracture_ckpt.package_version
    )
    assert "Plain chest X-ray" not in {meaning for _, _, meaning in codes}

    study, sr, _ = reports[chest_id]
    assert (study.body_part, study.model) == ("CHEST", "chest")
    assert dict(sr_content_items(sr))["Target Region"] == "Chest"
    assert sr.ManufacturerModelName == node.service.checkpoint.name
    assert "125605004" not in {code for _, code, _ in coded_values(sr)}
    assert node.ready_studies(time.time() + 1) == []


def test_an_unrouted_node_still_refuses_a_hand_header(tmp_path, shared_data):
    from xraytriage.dicom import StoreRefused

    _, hand = mixed_films(shared_data)
    service = TriageService(ServeConfig(data_dir=tmp_path / "data", workers=0, heatmaps=False))
    node = DicomNode(service, DicomSettings(port=0), "127.0.0.1")
    with pytest.raises(StoreRefused, match="out of scope: body part HAND"):
        receive(node, dicom_of(hand, tmp_path / "hand.dcm", "HAND"))
