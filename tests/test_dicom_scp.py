"""The Storage SCP against the real dcmtk tools (echoscu/storescu) and our own SCU."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
import threading
import time
from contextlib import ExitStack

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs import echoscu, require_tools, storescu, write_image
from waiting import wait_until
from xraytriage.dicom import (
    STATUS_NO_PIXEL_DATA,
    STATUS_NOT_ACCEPTED,
    STATUS_OUT_OF_RESOURCES,
    Destination,
    ReceivedImage,
    ScpConfig,
    StorageSCP,
    StoreRefused,
    send_datasets,
)
from xraytriage.io import read_radiograph

# Real DICOM associations over TCP sockets (pynetdicom on both ends): a system-level test of
# the Storage SCP, so it runs in `make test`, not in the `make test-fast` edit loop.
pytestmark = pytest.mark.slow

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


class Collector:
    """An ``on_image`` that keeps what it got; ``fail`` makes it raise like a full disk."""

    def __init__(self) -> None:
        self.images: list[tuple[bytes, ReceivedImage]] = []
        self.fail = False
        self.refuse: StoreRefused | None = None
        self._lock = threading.Lock()

    def __call__(self, data: bytes, info: ReceivedImage) -> None:
        if self.fail:
            raise OSError("No space left on device")
        if self.refuse is not None:
            raise self.refuse
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


def test_no_pixel_data_and_refusals_by_on_image_are_permanent_failures(scp, collector, tmp_path):
    """A PACS retries 0xA7xx ("out of resources") for ever: permanent problems must not use it."""
    cr = pydicom.dcmread(write_image(tmp_path / "cr.dcm", CR_IMAGE_STORAGE, "CR"))
    del cr.PixelData
    [result] = send_datasets([cr], _dest(scp))
    assert result.status == STATUS_NO_PIXEL_DATA and "no pixel data" in result.message
    collector.refuse = StoreRefused("body part HAND is out of the model's scope")
    [result] = send_datasets([pydicom.dcmread(tmp_path / "cr.dcm")], _dest(scp))
    assert result.status == STATUS_NOT_ACCEPTED and "HAND is out of" in result.message
    assert collector.images == []
    with pytest.raises(ValueError, match="not a permanent"):
        StoreRefused("disk full", STATUS_OUT_OF_RESOURCES)


# --------------------------------------------------------------------------- associations


def _associate(node: StorageSCP, calling_ae: str = "ECHOSCU", called_ae: str | None = None):
    """An association from our own requestor (C-ECHO context); the caller releases it."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", node.port, ae_title=called_ae or node.config.ae_title)


def _echo_ok(node: StorageSCP, **kwargs) -> bool:
    assoc = _associate(node, **kwargs)
    if not assoc.is_established:
        return False
    try:
        return int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def _reject_reason(assoc) -> tuple[int, int, int]:
    """(result, source, diagnostic) of an A-ASSOCIATE-RJ."""
    assert assoc.is_rejected, "the association was not rejected"
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def _idle_socket(node: StorageSCP, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def test_idle_sockets_do_not_lock_the_node_out(collector):
    """10 idle TCP sockets used to make every C-ECHO fail ("Local Limit Exceeded")."""
    node = StorageSCP(ScpConfig(port=0), collector)  # the default limits
    idle = node.config.max_pending + 4  # past the pending limit: the oldest get dropped
    with node, ExitStack() as sockets:
        for i in range(idle):
            # some send half an A-ASSOCIATE-RQ header and stall (slowloris)
            sockets.enter_context(_idle_socket(node, b"\x01\x00\x00" if i % 2 else b""))
        # every idle connection has reached the gate (pending there, or already closed as the oldest)
        wait_until(
            lambda: node.admission.counts[1] + node.admission.evicted >= idle,
            30,
            what="idle sockets at the gate",
        )
        started = time.monotonic()
        assert _echo_ok(node)
        assert time.monotonic() - started < 30  # < 1 s on an idle machine
        holders, pending = node.admission.counts
        assert holders <= 1 and pending <= 4 * node.config.max_pending  # the idle ones wait, cheaply


def test_twenty_concurrent_associations_all_succeed(tmp_path):
    """20 storescu processes at once: the node holds all 20 associations at the same moment
    (``on_image`` waits until every one is inside it); 6 of 20 used to be refused."""
    require_tools("storescu")
    count = 20
    together = threading.Barrier(count, timeout=150)
    received: list[str] = []

    def on_image(data: bytes, info: ReceivedImage) -> None:
        together.wait()  # raises BrokenBarrierError (-> a failure status) if not all 20 arrive
        received.append(info.sop_instance_uid)

    files = [write_image(tmp_path / f"cr{i}.dcm", CR_IMAGE_STORAGE, "CR") for i in range(count)]
    with StorageSCP(ScpConfig(port=0), on_image) as node:
        assert count <= node.config.max_associations
        args = ["-ta", "150", "-td", "150", "-aet", "STORESCU", "-aec", "XRAYTRIAGE", "127.0.0.1", node.port]
        processes = [
            subprocess.Popen(
                ["storescu", *map(str, args), f], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            for f in files
        ]
        outputs = [p.communicate(timeout=200)[0].decode(errors="replace") for p in processes]
    failed = [out for p, out in zip(processes, outputs, strict=True) if p.returncode != 0]
    assert failed == [] and not together.broken
    assert len(received) == count


def test_beyond_the_limit_a_transient_reject_then_the_slot_is_free_again(collector):
    node = StorageSCP(ScpConfig(port=0, max_associations=2), collector)
    with node:
        held = [_associate(node), _associate(node)]
        assert all(a.is_established for a in held)
        extra = _associate(node)
        assert _reject_reason(extra) == (0x02, 0x03, 0x02)  # transient, local limit exceeded
        held.pop().release()
        wait_until(lambda: node.admission.counts[0] <= 1, 10, what="the released slot to be free")
        assert _echo_ok(node)
        held.pop().release()


def test_called_ae_title_must_be_ours(collector):
    require_tools("echoscu")
    with StorageSCP(ScpConfig(port=0), collector) as node:
        rc, out = echoscu(node.port, called_ae="SOMEONE_ELSE")
        assert rc != 0 and "Called AE Title Not Recognized" in out, out
        assert _reject_reason(_associate(node, called_ae="SOMEONE_ELSE")) == (0x01, 0x01, 0x07)
        assert _echo_ok(node)
    config = ScpConfig(port=0, called_ae_titles=frozenset({"XRAYTRIAGE", "TRIAGE_ALIAS"}))
    with StorageSCP(config, collector) as node:
        assert _echo_ok(node, called_ae="TRIAGE_ALIAS") and _echo_ok(node, called_ae="XRAYTRIAGE")
        assert not _echo_ok(node, called_ae="OTHER")


def test_a_disallowed_calling_ae_is_refused_for_good_and_takes_no_slot(collector):
    config = ScpConfig(port=0, allowed_calling_aes=frozenset({"MODALITY1"}), max_associations=1)
    with StorageSCP(config, collector) as node:
        held = _associate(node, calling_ae="MODALITY1")
        assert held.is_established
        # the node is full, yet the intruder hears "not recognised" (permanent), not "busy"
        assert _reject_reason(_associate(node, calling_ae="INTRUDER")) == (0x01, 0x01, 0x03)
        held.release()
        for _ in range(3):
            assert _associate(node, calling_ae="INTRUDER").is_rejected
        assert _echo_ok(node, calling_ae="MODALITY1")  # intruders left no slot taken


def test_silent_and_half_sent_connections_are_closed_by_the_request_timeout(collector):
    with StorageSCP(ScpConfig(port=0, request_timeout=1), collector) as node:
        silent, stalled = _idle_socket(node), _idle_socket(node, b"\x01\x00\x00\x00")
        started = time.monotonic()
        for sock in (silent, stalled):
            with sock:
                try:
                    data = sock.recv(1024)  # b"" (closed) or an A-ABORT, then closed
                    while data:
                        data = sock.recv(1024)
                except ConnectionResetError:
                    pass
        assert time.monotonic() - started < 8
        # their threads are gone too
        wait_until(
            lambda: node.admission.counts == (0, 0),
            max(0.1, 8 - (time.monotonic() - started)),
            what="no slots held",
        )


class _Clock:
    """``time`` for the admission module with a ``monotonic()`` the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def __getattr__(self, name: str):
        return getattr(time, name)


def test_the_oldest_idle_connection_makes_room_for_a_new_one(collector, monkeypatch):
    import xraytriage.dicom.association_gate as admission

    clock = _Clock()
    monkeypatch.setattr(admission, "time", clock)  # the gate's clock: the grace period passes at once
    with StorageSCP(ScpConfig(port=0, max_pending=2), collector) as node, ExitStack() as sockets:
        first = sockets.enter_context(_idle_socket(node))
        for _ in range(2):
            sockets.enter_context(_idle_socket(node))
        wait_until(
            lambda: node.admission.counts[1] == 3, 30, what="three idle connections pending at the gate"
        )
        clock.advance(admission.GRACE_S + 1)  # past the grace period: the next connection closes the oldest
        sockets.enter_context(_idle_socket(node))
        first.settimeout(5)
        assert first.recv(16) == b""  # closed by the node
        assert _echo_ok(node)


def test_config_rejects_nonsense_limits():
    from xraytriage.errors import ConfigError

    for bad in (
        {"max_associations": 0},
        {"max_pending": 0},
        {"request_timeout": 0},
        {"acse_timeout": -1},
        {"called_ae_titles": frozenset()},
    ):
        with pytest.raises(ConfigError):
            ScpConfig(port=0, **bad)


def test_a_deflate_bomb_is_refused_before_it_is_inflated(collector, shared_data, tmp_path):
    """1024 x 1024 x 200 frames declared, well under a megabyte on the wire: refused for good from
    the header, and the data set is never decoded (``event.dataset`` would inflate all of it)."""
    from types import SimpleNamespace

    from attacks import deflate_bomb

    bomb = deflate_bomb(shared_data, tmp_path / "bomb.dcm").read_bytes()
    assert len(bomb) < 8 << 20

    class Event:
        assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="MODALITY"))

        def encoded_dataset(self, include_meta: bool = True) -> bytes:
            return bomb

        @property
        def dataset(self):
            raise AssertionError("the data set was decoded (and inflated) before the size check")

    node = StorageSCP(ScpConfig(port=0, max_pixels=36_000_000), collector)
    status = node._handle_store(Event())
    assert status.Status == STATUS_NOT_ACCEPTED and "over the limit" in status.ErrorComment
    assert collector.images == []
