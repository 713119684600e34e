"""A DICOM Storage SCP: receives radiographs by C-STORE, answers C-ECHO.

Every storage SOP class and transfer syntax is negotiated, so a modality that sends a CT gets an
association and a C-STORE *status* explaining the refusal (a failed association tells a PACS
administrator nothing). Statuses (PS3.4 B.2.3 / PS3.7 C):

* ``0x0000`` success: the image was handed to ``on_image``.
* ``0xC000`` (Error: cannot understand) with ErrorComment: refused by policy
  (not CR/DX, not chest or skeleton; see ``acceptance.check_acceptable``).
* ``0xC210`` the data set could not be decoded.
* ``0xA700`` (Refused: out of resources) ``on_image`` raised (disk full, database down...);
  the sender may retry later.

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

from xraytriage.dicom.acceptance import check_acceptable, sop_class_name
from xraytriage.dicom.aetitle import validate_ae_title
from xraytriage.errors import ConfigError

LOGGER = logging.getLogger(__name__)

# pynetdicom logs Query/Retrieve identifiers (patient names, IDs) by default; never do that.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

STATUS_SUCCESS = 0x0000
STATUS_NOT_ACCEPTED = 0xC000
"""Error, cannot understand: the object is not one this node triages (reason in ErrorComment)."""
STATUS_UNDECODABLE = 0xC210
"""Error, cannot understand: the data set could not be decoded."""
STATUS_OUT_OF_RESOURCES = 0xA700
"""Refused, out of resources: the received image could not be stored; retry later."""


@dataclass(frozen=True)
class ScpConfig:
    """Where the node listens and who may send to it (``None`` allow-list = anyone)."""

    ae_title: str = "XRAYTRIAGE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aes: frozenset[str] | None = None

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
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        if self.config.allowed_calling_aes is not None:
            ae.require_calling_aet = sorted(self.config.allowed_calling_aes)
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 120
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
            handlers = [(evt.EVT_C_STORE, self._handle_store), (evt.EVT_C_ECHO, self._handle_echo)]
            try:
                self._server = self.ae.start_server(
                    (self.config.host, self.config.port), block=False, evt_handlers=handlers
                )
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen for DICOM on {self.config.host}:{self.config.port}: {exc}"
                ) from None
        LOGGER.info("DICOM node %s listening on %s:%d", self.config.ae_title, self.config.host, self.port)

    def stop(self) -> None:
        """Stop listening and close open associations."""
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

    def _handle_echo(self, event: evt.Event) -> int:
        LOGGER.info("C-ECHO from %s", event.assoc.requestor.ae_title)
        return STATUS_SUCCESS

    def _handle_store(self, event: evt.Event) -> Dataset:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            reason = check_acceptable(ds)
        except Exception as exc:  # a malformed data set must not take the node down
            LOGGER.warning("C-STORE from %s: undecodable data set (%s)", calling_ae, type(exc).__name__)
            return _status(STATUS_UNDECODABLE, "cannot decode the data set")
        sop_instance_uid = str(ds.get("SOPInstanceUID", ""))
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
