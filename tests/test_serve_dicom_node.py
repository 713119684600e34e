"""The DICOM node's bookkeeping: quiet period, results kept on disk, an image that arrives while
results are being sent, one image per SOP instance, and the C-STORE status of each kind of
refusal (the end-to-end test with storescu and Orthanc is test_serve_dicom.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from pacs import dicom_copy, sr_content_items, write_image
from waiting import wait_until
from xraytriage.dicom import (
    STATUS_NO_PIXEL_DATA,
    STATUS_NOT_ACCEPTED,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    Destination,
    ReceivedImage,
    send_datasets,
)
from xraytriage.serving.config import DicomSettings, ServeConfig
from xraytriage.serving.db import Heatmap, Image, Study
from xraytriage.serving.dicom_node import KEPT, PENDING, DicomNode
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import StudyState

DONE = StudyState.DONE

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
    with node.service.db.session() as s:
        arrived = s.get(Study, study_id).last_image_at  # (triage may take longer than QUIET here)
    assert node.ready_studies(arrived + 0.1) == []  # an image just arrived
    assert node.ready_studies(time.time() + QUIET + 1) == [study_id]
    assert node.dispatch(study_id) == KEPT
    with node.service.db.session() as s:
        study = s.get(Study, study_id)
        info = json.loads(study.dicom_results_info)
        assert study.dicom_results_state == KEPT and study.calling_ae == "MODALITY"
        flagged = len(study.findings)
        tier, reason = study.tier, study.flag_reason
    files = sorted(Path(info["folder"]).glob("*.dcm"))
    modalities = [pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files]
    # one SR; one Secondary Capture per flagged finding, at most heatmap_findings of them
    assert modalities.count("SR") == 1
    # the SR states the study's tier and, when flagged, why
    sr = pydicom.dcmread(files[modalities.index("SR")])
    items = dict(sr_content_items(sr))
    assert tier in ("critical", "flagged", "routine")
    assert items["Triage tier"].lower().startswith(tier)
    assert items.get("Reason for flag", "") == reason
    assert modalities.count("OT") == min(flagged, node.service.config.heatmap_findings)
    assert node.ready_studies(time.time() + QUIET + 1) == []  # sent once


def test_an_image_arriving_during_dispatch_keeps_the_study_pending(
    node: DicomNode, shared_data: Path, tmp_path: Path
) -> None:
    study_id = receive(node, shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    build = node.build_results

    def build_while_another_image_arrives(sid: str):
        datasets = build(sid)
        receive(node, second)  # same study, another instance
        return datasets

    node.build_results = build_while_another_image_arrives  # type: ignore[method-assign]
    second = dicom_copy(
        shared_data / "dicom" / "cr_chest_pa_monochrome1.dcm", tmp_path / "2.dcm", new_instance=True
    )
    assert node.dispatch(study_id) == PENDING
    with node.service.db.session() as s:
        study = s.get(Study, study_id)
        assert study.dicom_results_state == PENDING and len(study.images) == 2
    assert node.ready_studies(time.time() + QUIET + 1) == [study_id]  # updated results will follow


def test_one_instance_in_three_transfer_syntaxes_is_one_image(
    node: DicomNode, shared_data: Path, tmp_path: Path
) -> None:
    """The same SOP instance as JPEG Baseline (as stored), Explicit VR Little Endian and Deflated:
    the latest copy replaces the earlier ones (it used to make three images)."""
    source = shared_data / "dicom" / "siim_cr_chest_pa.dcm"
    copies = [
        source,
        dicom_copy(source, tmp_path / "explicit.dcm", ExplicitVRLittleEndian),
        dicom_copy(source, tmp_path / "deflated.dcm", DeflatedExplicitVRLittleEndian),
    ]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in copies]
    assert len(set(digests)) == 3
    for path in copies:
        study_id = receive(node, path)  # each one triaged (heatmap rows drawn) before the next
        node.service.drawings.ensure(digests[copies.index(path)], ["Effusion"])
    with node.service.db.session() as s:
        study = s.get(Study, study_id)
        assert [image.id for image in study.images] == [digests[-1]]  # the latest copy
        assert study.state == DONE and study.key_image_id == digests[-1]
        assert {h.image_id for h in s.query(Heatmap)} == {digests[-1]}
    # another instance of the same study is another image; the same bytes again are a duplicate
    other = dicom_copy(source, tmp_path / "other.dcm", new_instance=True)
    receive(node, other)
    again = node.service.ingest(copies[-1].read_bytes(), "again.dcm", source="dicom")
    assert again.duplicate
    with node.service.db.session() as s:
        assert s.query(Image).count() == 2


def _send(node: DicomNode, path: Path) -> tuple[int | None, str]:
    [result] = send_datasets(
        [pydicom.dcmread(path)], Destination(node.settings.ae_title, "127.0.0.1", node.port)
    )
    return result.status, result.message


@pytest.mark.slow  # over 3 s: runs pytest / a DICOM node end to end
def test_each_refusal_gets_its_status_family(node: DicomNode, shared_data: Path, tmp_path: Path) -> None:
    """Permanent problems (no pixels, out of policy, over the pixel limit) must never answer
    0xA700 "out of resources", which a PACS retries for ever; a full disk must."""
    cr = "1.2.840.10008.5.1.4.1.1.1"
    no_pixels = pydicom.dcmread(write_image(tmp_path / "nopix.dcm", cr, "CR"))
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    huge = pydicom.dcmread(write_image(tmp_path / "huge.dcm", cr, "CR"))
    huge.Rows = huge.Columns = 40000  # the header claims 1.6 gigapixels (a bomb), the data are tiny
    huge.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    node.scp.start()
    try:
        assert _send(node, tmp_path / "nopix.dcm")[0] == STATUS_NO_PIXEL_DATA
        assert _send(node, write_image(tmp_path / "ct.dcm", "1.2.840.10008.5.1.4.1.1.2", "CT"))[0] == (
            STATUS_NOT_ACCEPTED
        )
        status, message = _send(node, tmp_path / "huge.dcm")
        assert status == STATUS_NOT_ACCEPTED and "over the limit" in message, message

        def disk_full(data: bytes):
            raise OSError(errno.ENOSPC, "No space left on device")

        node.service.store.put = disk_full  # type: ignore[method-assign]
        assert _send(node, shared_data / "dicom" / "siim_cr_chest_pa.dcm")[0] == STATUS_OUT_OF_RESOURCES
        del node.service.store.put  # space is back: the retry is stored
        # the service re-probes its storage at most every probe_s: wait until a probe write succeeds
        wait_until(
            node.service.storage.healthy, 10 * node.service.storage.probe_s, what="storage healthy again"
        )
        assert _send(node, shared_data / "dicom" / "siim_cr_chest_pa.dcm")[0] == STATUS_SUCCESS
    finally:
        node.scp.stop()


def test_serve_options_for_called_ae_titles_and_the_association_limit() -> None:
    from xraytriage.cli.main import build_parser
    from xraytriage.cli.serve import build_dicom_settings
    from xraytriage.errors import ConfigError

    def settings(*extra: str) -> DicomSettings:
        return build_dicom_settings(build_parser().parse_args(["serve", "--dicom-port", "0", *extra]))

    default = settings("--ae-title", "TRIAGE1")
    assert default.called_ae_titles is None and default.max_associations == 32
    node_config = DicomNode.scp_config(default, "127.0.0.1")
    assert node_config.called_ae_titles == frozenset({"TRIAGE1"})  # default: our own AE title
    custom = settings("--dicom-called-ae", "TRIAGE1, ALIAS", "--dicom-max-associations", "5")
    assert custom.called_ae_titles == frozenset({"TRIAGE1", "ALIAS"}) and custom.max_associations == 5
    with pytest.raises(ConfigError):
        settings("--dicom-max-associations", "0")
    with pytest.raises(ConfigError, match="needs --dicom-port"):
        build_dicom_settings(build_parser().parse_args(["serve", "--dicom-called-ae", "X"]))
