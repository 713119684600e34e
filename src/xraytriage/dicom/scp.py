"""A DICOM Storage SCP: receives radiographs by C-STORE, answers C-ECHO.

Every storage SOP class and transfer syntax is negotiated, so a modality that sends a CT gets an
association and a C-STORE *status* explaining the refusal (a failed association tells a PACS
administrator nothing). Statuses (PS3.4 B.2.3 / PS3.7 C): permanent problems get the failure
families a sender does not retry, only a transient one gets "out of resources".

* ``0x0000`` success: the image was handed to ``on_image``.
* ``0xA900`` (Error: data set does not match SOP class): an image storage object without pixel
  data.
* ``0xC000`` (Error: cannot understand) with ErrorComment: refused by policy (not CR/DX, not
  chest or skeleton; see ``object_filter.check_acceptable``), or ``on_image`` refused it for good
  (raised :class:`StoreRefused`).
* ``0xC210`` the data set could not be decoded.
* ``0xA700`` (Refused: out of resources): ``on_image`` raised anything else (disk full, database
  down...); the sender may retry later.

Associations (see ``association_gate``): the called AE title must be ours, the calling AE title on the
allow-list (when there is one), both checked before the association takes one of
``max_associations`` slots; connections that have not sent a whole A-ASSOCIATE-RQ wait at a
gate, never hold a slot and never reach pynetdicom. The request, ACSE, DIMSE and network
timeouts bound how long a silent peer keeps a thread.

Only UIDs, AE titles, SOP classes and modalities are logged, never patient attributes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification

from xraytriage.dicom.aetitle import validate_ae_title
from xraytriage.dicom.association_gate import Admission, GatedAssociationServer, Verdict
from xraytriage.dicom.object_filter import check_acceptable, sop_class_name
from xraytriage.errors import (  # noqa: F401 - the refusal and its statuses are re-exported
    PERMANENT_FAILURES,
    STATUS_NO_PIXEL_DATA,
    STATUS_NOT_ACCEPTED,
    STATUS_UNDECODABLE,
    ConfigError,
    ImageTooLargeError,
    StoreRefused,
)
from xraytriage.io import DEFAULT_MAX_PIXELS
from xraytriage.io.dicom import read_dicom_header

LOGGER = logging.getLogger(__name__)

# pynetdicom logs Query/Retrieve identifiers (patient names, IDs) by default; never do that.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
"""Refused, out of resources: the received image could not be stored; retry later."""

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class ScpConfig:
    """Where the node listens, who may send to it and how long it waits.

    ``called_ae_titles``: the called AE titles it answers to (default: ``ae_title`` only).
    ``allowed_calling_aes``: ``None`` = anyone. ``max_associations``: concurrent associations;
    beyond it a transient reject. ``max_pending``: connections kept that have not yet sent an
    A-ASSOCIATE-RQ (beyond it the oldest is closed). ``request_timeout``: seconds from connecting
    to a whole A-ASSOCIATE-RQ; ``acse_timeout``: pynetdicom's, for negotiating and releasing;
    ``dimse_timeout``: for a DIMSE message; ``network_timeout``: an association idle this long,
    or a PDU stalled this long, is aborted.
    """

    ae_title: str = "XRAYTRIAGE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aes: frozenset[str] | None = None
    called_ae_titles: frozenset[str] | None = None
    max_associations: int = 32
    max_pending: int = 16
    request_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 30.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Largest image accepted (the service's pixel cap), checked on the encoded bytes before the
    data set is decoded: a deflated bomb is refused without being inflated."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", validate_ae_title(self.ae_title, "our AE title"))
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError(f"DICOM port {self.port} is out of range 0-65535 (0 = any free port)")
        if self.allowed_calling_aes is not None:
            if not self.allowed_calling_aes:
                raise ConfigError("the calling AE allow-list is empty: nobody could send images")
            allowed = frozenset(
                validate_ae_title(title, "allowed calling AE title") for title in self.allowed_calling_aes
            )
            object.__setattr__(self, "allowed_calling_aes", allowed)
        called = self.called_ae_titles if self.called_ae_titles is not None else {self.ae_title}
        if not called:
            raise ConfigError("the called AE title list is empty: no association could be accepted")
        object.__setattr__(
            self, "called_ae_titles", frozenset(validate_ae_title(t, "called AE title") for t in called)
        )
        for what in ("max_associations", "max_pending"):
            if int(getattr(self, what)) < 1:
                raise ConfigError(f"DICOM {what.replace('_', ' ')} must be >= 1, got {getattr(self, what)}")
        for what in ("request_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
            if not float(getattr(self, what)) > 0:
                raise ConfigError(f"DICOM {what.replace('_', ' ')} must be > 0 s, got {getattr(self, what)}")


@dataclass(frozen=True)
class ReceivedImage:
    """What the service needs to file a received image without re-parsing it."""

    calling_ae: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str


OnImage = Callable[[bytes, ReceivedImage], None]
"""``on_image(part10_bytes, info)``: called on the association's thread, once per accepted image;
the bytes are a complete DICOM Part-10 file (file meta included, original transfer syntax)."""


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


class StorageSCP:
    """The listening node. ``start()`` returns at once; associations run on server threads."""

    def __init__(self, config: ScpConfig, on_image: OnImage) -> None:
        self.config = config
        self._on_image = on_image
        self._server = None
        self._lock = threading.Lock()
        self.admission = Admission(
            config.called_ae_titles or frozenset({config.ae_title}),
            config.allowed_calling_aes,
            config.max_associations,
            config.max_pending,
        )
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        # pynetdicom's own limit counts idle sockets too; ``association_gate.Admission`` enforces ours (on
        # associations that asked), so pynetdicom's is set out of the way
        ae.maximum_associations = 100 * (self.config.max_associations + self.config.max_pending)
        ae.acse_timeout = self.config.acse_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        return ae

    @property
    def port(self) -> int:
        """The bound port (the real one when port 0 was asked); the configured port before start."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen in the background; raises ConfigError when the port cannot be bound."""
        with self._lock:
            if self._server is not None:
                return
            handlers = [
                (evt.EVT_REQUESTED, self._handle_request),
                (evt.EVT_CONN_CLOSE, self._handle_close),
                (evt.EVT_C_STORE, self._handle_store),
                (evt.EVT_C_ECHO, self._handle_echo),
            ]
            try:
                server = self.ae.make_server(
                    (self.config.host, self.config.port),
                    evt_handlers=handlers,
                    server_class=GatedAssociationServer,
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen for DICOM on {self.config.host}:{self.config.port}: {exc}"
                ) from None
            server.admission = self.admission
            server.gate_timeout = self.config.request_timeout
            server.read_timeout = self.config.network_timeout
            threading.Thread(
                target=server.serve_forever, name="xraytriage-dicom-listener", daemon=True
            ).start()
            self._server = server
        LOGGER.info("DICOM node %s listening on %s:%d", self.config.ae_title, self.config.host, self.port)

    def stop(self) -> None:
        """Stop listening and close the connections still waiting to ask for an association."""
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            LOGGER.info("DICOM node %s stopped", self.config.ae_title)

    def __enter__(self) -> StorageSCP:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handle_close(self, event: evt.Event) -> None:
        self.admission.closed(event.assoc)

    def _handle_request(self, event: evt.Event) -> None:
        """A-ASSOCIATE-RQ received: reject it here (before pynetdicom negotiates) unless the AE
        titles are right and a slot is free."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling_ae = str(request.calling_ae_title or "").strip()
        called_ae = str(request.called_ae_title or "").strip()
        verdict = self.admission.decide(assoc, calling_ae, called_ae)
        if verdict is Verdict.ADMITTED:
            return
        address = assoc.requestor.address_info.address if assoc.requestor.address_info else "?"
        LOGGER.warning(
            "DICOM association from %s (calling %s, called %s) rejected: %s",
            address,
            calling_ae,
            called_ae,
            verdict.name.lower().replace("_", " "),
        )
        assoc.acse.send_reject(*verdict.value)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # returns once the reject is sent and the peer closed (or the ACSE timeout)

    def _too_large(self, event: evt.Event) -> str | None:
        """The reason to refuse an image whose header declares more pixels than the cap, read
        from the encoded bytes with a bounded inflate (``event.dataset`` would inflate a
        deflated data set completely: a 1.6 MB deflate bomb is gigabytes). Other header
        problems are left to the checks that follow, which give them their own statuses."""
        try:
            read_dicom_header(event.encoded_dataset(include_meta=True), self.config.max_pixels, "image")
        except ImageTooLargeError as exc:
            return f"over the limit: {exc.problem}"  # the gist first: ErrorComment keeps 64 characters
        except Exception:  # ImageReadError and worse: judged by the checks that follow
            return None
        return None

    def _handle_echo(self, event: evt.Event) -> int:
        LOGGER.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _handle_store(self, event: evt.Event) -> Dataset:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        too_large = self._too_large(event)
        if too_large is not None:
            LOGGER.info("C-STORE from %s refused: image too large", calling_ae)
            return _status(STATUS_NOT_ACCEPTED, too_large)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            reason = check_acceptable(ds)
        except Exception as exc:  # a malformed data set must not take the node down
            LOGGER.warning("C-STORE from %s: undecodable data set (%s)", calling_ae, type(exc).__name__)
            return _status(STATUS_UNDECODABLE, "cannot decode the data set")
        sop_instance_uid = str(ds.get("SOPInstanceUID", ""))
        if reason is None and not any(keyword in ds for keyword in PIXEL_KEYWORDS):
            LOGGER.info("C-STORE from %s refused (%s): no pixel data", calling_ae, sop_instance_uid)
            return _status(STATUS_NO_PIXEL_DATA, f"no pixel data in {sop_class_name(ds.SOPClassUID)}")
        if reason is not None:
            LOGGER.info("C-STORE from %s refused (%s): %s", calling_ae, sop_instance_uid, reason)
            return _status(STATUS_NOT_ACCEPTED, reason)
        image = ReceivedImage(
            calling_ae=calling_ae,
            study_uid=str(ds.get("StudyInstanceUID", "")),
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            modality=str(ds.get("Modality", "")).upper(),
        )
        try:
            data = event.encoded_dataset(include_meta=True)
            self._on_image(data, image)
        except StoreRefused as refused:  # for good: a permanent failure, never "retry"
            LOGGER.info(
                "C-STORE from %s refused (%s) with 0x%04X: %s",
                calling_ae,
                sop_instance_uid,
                refused.status,
                refused.reason,
            )
            return _status(refused.status, refused.reason)
        except Exception as exc:  # storage trouble: tell the sender to retry, keep serving
            LOGGER.error(
                "C-STORE from %s: could not store %s (%s); answered 0xA700",
                calling_ae,
                sop_instance_uid,
                type(exc).__name__,
            )
            LOGGER.debug("on_image failure", exc_info=True)
            return _status(STATUS_OUT_OF_RESOURCES, "out of resources: image not stored, retry")
        LOGGER.info(
            "C-STORE from %s accepted %s %s",
            calling_ae,
            image.modality,
            sop_class_name(image.sop_class_uid),
        )
        return _status(STATUS_SUCCESS)
