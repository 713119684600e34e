"""The Storage SCP against the real dcmtk tools (echoscu/storescu) and our own SCU."""

from __future__ import annotations

import io
import logging
import threading

import numpy as np
import pydicom
import pytest

from pacs import echoscu, require_tools, storescu, write_image
from xraytriage.dicom import (
    STATUS_NOT_ACCEPTED,
    STATUS_OUT_OF_RESOURCES,
    Destination,
    ReceivedImage,
    ScpConfig,
    StorageSCP,
    send_datasets,
)
from xraytriage.io import read_radiograph

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


class Collector:
    """An ``on_image`` that keeps what it got; ``fail`` makes it raise like a full disk."""

    def __init__(self) -> None:
        self.images: list[tuple[bytes, ReceivedImage]] = []
        self.fail = False
        self._lock = threading.Lock()

    def __call__(self, data: bytes, info: ReceivedImage) -> None:
        if self.fail:
            raise OSError("No space left on device")
        with self._lock:
            self.images.append((data, info))


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def scp(collector):
    node = StorageSCP(ScpConfig(port=0), collector)
    node.start()
    yield node
    node.stop()


def _dest(node: StorageSCP) -> Destination:
    return Destination(node.config.ae_title, "127.0.0.1", node.port)


def test_echoscu_gets_success(scp):
    require_tools("echoscu")
    assert scp.port != 0
    rc, out = echoscu(scp.port)
    assert rc == 0, out
    assert "Received Echo Response (Success)" in out


@pytest.mark.parametrize("name", ["siim_cr_chest_pa.dcm", "cr_chest_pa_monochrome1.dcm"])
def test_storescu_of_real_files_reaches_on_image_unchanged(scp, collector, shared_data, tmp_path, name):
    require_tools("storescu")
    path = shared_data / "dicom" / name
    rc, out = storescu(scp.port, [path])
    assert rc == 0, out
    assert len(collector.images) == 1, out
    data, info = collector.images[0]
    original = pydicom.dcmread(path)
    assert info == ReceivedImage(
        calling_ae="STORESCU",
        study_uid=original.StudyInstanceUID,
        series_uid=original.SeriesInstanceUID,
        sop_instance_uid=original.SOPInstanceUID,
        sop_class_uid=original.SOPClassUID,
        modality="CR",
    )
    received = pydicom.dcmread(io.BytesIO(data))  # a complete Part-10 file: preamble + file meta
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID  # JPEG kept
    assert received == original
    copy = tmp_path / "received.dcm"
    copy.write_bytes(data)
    got, want = read_radiograph(copy), read_radiograph(path)
    np.testing.assert_array_equal(got.pixels, want.pixels)
    assert got.meta["photometric"] == want.meta["photometric"]


def test_ct_is_refused_by_status_and_the_node_keeps_serving(scp, collector, shared_data, tmp_path):
    require_tools("storescu", "echoscu")
    ct = write_image(tmp_path / "ct.dcm", CT_IMAGE_STORAGE, "CT")
    rc, out = storescu(scp.port, [ct])
    assert rc != 0 and "CannotUnderstand" in out, out  # storescu reports the failure status
    assert "Association Accepted" in out  # negotiated, refused per image, not per association
    assert collector.images == []
    # the exact status and reason, through our own SCU
    [result] = send_datasets([pydicom.dcmread(ct)], _dest(scp))
    assert result.status == STATUS_NOT_ACCEPTED and not result.ok
    assert "CT Image Storage" in result.message
    # still serving: an echo and a real radiograph go through afterwards
    assert echoscu(scp.port)[0] == 0
    rc, out = storescu(scp.port, [shared_data / "dicom" / "siim_cr_chest_pa.dcm"])
    assert rc == 0, out
    assert len(collector.images) == 1


def test_head_cr_is_refused_naming_the_body_part(scp, collector, tmp_path):
    head = write_image(tmp_path / "head.dcm", CR_IMAGE_STORAGE, "CR", body_part="HEAD")
    [result] = send_datasets([pydicom.dcmread(head)], _dest(scp))
    assert result.status == STATUS_NOT_ACCEPTED and "body part HEAD" in result.message
    assert collector.images == []


def test_calling_ae_outside_the_allow_list_is_rejected(collector, tmp_path):
    require_tools("echoscu", "storescu")
    node = StorageSCP(ScpConfig(port=0, allowed_calling_aes=frozenset({"MODALITY1"})), collector)
    with node:
        rc, out = echoscu(node.port, calling_ae="INTRUDER")
        assert rc != 0 and "Association Rejected" in out, out
        assert "Calling AE Title Not Recognized" in out
        cr = write_image(tmp_path / "cr.dcm", CR_IMAGE_STORAGE, "CR")
        rc, out = storescu(node.port, [cr], calling_ae="INTRUDER")
        assert rc != 0 and collector.images == []
        rc, out = storescu(node.port, [cr], calling_ae="MODALITY1")
        assert rc == 0, out
        assert [info.calling_ae for _, info in collector.images] == ["MODALITY1"]


def test_on_image_failure_answers_out_of_resources_and_the_node_carries_on(scp, collector, tmp_path, caplog):
    require_tools("storescu")
    cr = write_image(tmp_path / "cr.dcm", CR_IMAGE_STORAGE, "CR")
    collector.fail = True
    with caplog.at_level(logging.DEBUG, logger="xraytriage.dicom"):
        [result] = send_datasets([pydicom.dcmread(cr)], _dest(scp))
    assert result.status == STATUS_OUT_OF_RESOURCES and not result.ok
    assert "0xA700" in caplog.text
    # the log never carries patient identifiers
    assert "Synthetic" not in caplog.text and "SYN-0001" not in caplog.text
    collector.fail = False
    rc, out = storescu(scp.port, [cr])
    assert rc == 0, out
    assert len(collector.images) == 1


def test_stop_frees_the_port(collector):
    node = StorageSCP(ScpConfig(port=0), collector)
    node.start()
    port = node.port
    node.stop()
    again = StorageSCP(ScpConfig(port=port), collector)
    again.start()  # would raise ConfigError if the first node still held the port
    assert again.port == port
    again.stop()
