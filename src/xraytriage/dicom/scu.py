"""Sending results to a PACS: C-ECHO and C-STORE as a Storage SCU.

A dead or refusing destination never raises: every dataset gets a ``SendResult`` saying what
happened, so the service can record the failure and retry later.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from xraytriage.dicom.aetitle import validate_ae_title
from xraytriage.dicom.object_filter import sop_class_name
from xraytriage.errors import ConfigError

LOGGER = logging.getLogger(__name__)

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class Destination:
    """A remote DICOM node: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``"ORTHANC@127.0.0.1:4242"`` (or ``AE@[::1]:104``) -> Destination; ConfigError otherwise."""
    usage = "expected AE_TITLE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242"
    raw = (text or "").strip()
    ae_part, at, address = raw.rpartition("@")
    if not at or not ae_part or not address:
        raise ConfigError(f"DICOM destination {text!r}: {usage}")
    ae_title = validate_ae_title(ae_part, f"DICOM destination {text!r}: AE title")
    if address.startswith("["):  # IPv6 literal
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigError(f"DICOM destination {text!r}: {usage}")
        port_text = rest[1:]
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            raise ConfigError(f"DICOM destination {text!r}: no port; {usage}")
    if not host:
        raise ConfigError(f"DICOM destination {text!r}: no host; {usage}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"DICOM destination {text!r}: port {port_text!r} is not 1-65535")
    return Destination(ae_title=ae_title, host=host, port=int(port_text))


@dataclass(frozen=True)
class SendResult:
    """Outcome of one C-STORE: the DIMSE status (None when none came back) and a message."""

    sop_instance_uid: str
    sop_class_uid: str
    status: int | None
    message: str

    @property
    def ok(self) -> bool:
        """Success, or success with a warning (0xB000-0xBFFF: coercion, element discarded)."""
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF)


def _make_ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=validate_ae_title(calling_ae, "calling AE title"))
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def echo(destination: Destination, calling_ae: str = "XRAYTRIAGE", timeout: float = 10) -> bool:
    """True when the destination accepts an association and answers C-ECHO with success."""
    ae = _make_ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.get("Status", -1)) == 0
    finally:
        assoc.release()


def _transfer_syntaxes(datasets: Sequence[Dataset]) -> dict[str, list[str]]:
    """SOP class -> transfer syntaxes to propose: each dataset's own, plus both uncompressed
    little-endian ones when the data are uncompressed (pynetdicom converts between them)."""
    wanted: dict[str, list[str]] = {}
    for ds in datasets:
        syntax = UID(str(ds.file_meta.TransferSyntaxUID))
        syntaxes = wanted.setdefault(str(ds.SOPClassUID), [])
        for candidate in (syntax, *(UNCOMPRESSED if not syntax.is_compressed else ())):
            if candidate not in syntaxes:
                syntaxes.append(candidate)
    return wanted


def _failed(datasets: Sequence[Dataset], message: str) -> list[SendResult]:
    return [
        SendResult(str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", "")), None, message)
        for ds in datasets
    ]


def send_datasets(
    datasets: Sequence[Dataset],
    destination: Destination,
    calling_ae: str = "XRAYTRIAGE",
    timeout: float = 30,
) -> list[SendResult]:
    """C-STORE every dataset over one association; one result per dataset, in order.

    Presentation contexts are requested for exactly the SOP classes being sent. Datasets need
    ``file_meta.TransferSyntaxUID`` (highdicom's builders set it).
    """
    datasets = list(datasets)
    if not datasets:
        return []
    missing = [i for i, ds in enumerate(datasets) if "TransferSyntaxUID" not in ds.get("file_meta", {})]
    if missing:
        raise ValueError(f"datasets {missing} have no file_meta.TransferSyntaxUID")
    ae = _make_ae(calling_ae, timeout)
    contexts = _transfer_syntaxes(datasets)
    if len(contexts) > 128:
        raise ValueError(f"{len(contexts)} SOP classes in one send; DICOM allows 128 contexts")
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, syntaxes)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except Exception as exc:  # e.g. an unresolvable host name
        return _failed(datasets, f"cannot reach {destination}: {type(exc).__name__}: {exc}")
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached"
        if assoc.is_aborted:
            why = "aborted the association"
        LOGGER.warning("DICOM destination %s %s", destination, why)
        return _failed(datasets, f"{destination} {why}")
    results: list[SendResult] = []
    try:
        for ds in datasets:
            results.append(_store_one(assoc, ds, destination))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _store_one(assoc, ds: Dataset, destination: Destination) -> SendResult:
    sop_instance, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
    if not assoc.is_established:
        return SendResult(sop_instance, sop_class, None, f"association with {destination} was lost")
    try:
        response = assoc.send_c_store(ds)
    except ValueError as exc:  # no accepted presentation context for this SOP class/syntax
        return SendResult(
            sop_instance, sop_class, None, f"{destination} did not accept {sop_class_name(sop_class)}: {exc}"
        )
    except Exception as exc:
        return SendResult(sop_instance, sop_class, None, f"C-STORE failed: {type(exc).__name__}: {exc}")
    if not response or "Status" not in response:
        return SendResult(
            sop_instance, sop_class, None, f"no C-STORE response from {destination} (timeout or abort)"
        )
    status = int(response.Status)
    comment = str(response.get("ErrorComment", "") or "")
    if status == 0:
        message = "stored"
    elif 0xB000 <= status <= 0xBFFF:
        message = f"stored with warning 0x{status:04X}" + (f": {comment}" if comment else "")
    else:
        message = f"refused with status 0x{status:04X}" + (f": {comment}" if comment else "")
        LOGGER.warning("%s refused %s: 0x%04X", destination, sop_class_name(sop_class), status)
    return SendResult(sop_instance, sop_class, status, message)
