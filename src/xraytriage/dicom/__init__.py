"""The DICOM node: receive radiographs (Storage SCP), build results (SC + SR), send them (SCU).

Public API (``xraytriage.io.dicom`` remains the pixel reader; this package is networking and
result objects):

* ``check_acceptable(ds) -> str | None``: None = triage it, else the refusal reason.
* ``ScpConfig(ae_title, host, port, allowed_calling_aes, called_ae_titles, max_associations,
  max_pending, request_timeout, acse_timeout, dimse_timeout, network_timeout)``, ``StorageSCP(config, on_image)``
  with ``start()``, ``stop()``, ``port``; ``on_image(part10_bytes, ReceivedImage)``, which raises
  ``StoreRefused(reason, status)`` to refuse an image for good.
  C-STORE statuses: ``STATUS_SUCCESS`` 0x0000, ``STATUS_NO_PIXEL_DATA`` 0xA900,
  ``STATUS_NOT_ACCEPTED`` 0xC000 (policy or ``StoreRefused``, reason in ErrorComment),
  ``STATUS_UNDECODABLE`` 0xC210, ``STATUS_OUT_OF_RESOURCES`` 0xA700 (``on_image`` raised
  anything else: transient, retry).
* ``build_secondary_capture(source, overlay_rgb, caption, series_instance_uid, series_number,
  instance_number, model)`` and ``build_structured_report(sources, findings, model,
  series_instance_uid, series_number, instance_number, abnormal=None)``, with
  ``FindingResult(name, probability, threshold)`` and ``ModelInfo(name, version)``.
* ``Destination(ae_title, host, port)``, ``parse_destination("AE@host:port")``,
  ``echo(destination, calling_ae)``, ``send_datasets(datasets, destination, calling_ae,
  timeout) -> list[SendResult]``.
"""

from xraytriage.dicom.object_filter import check_acceptable
from xraytriage.dicom.results import (
    FindingResult,
    ModelInfo,
    build_secondary_capture,
    build_structured_report,
)
from xraytriage.dicom.scp import (
    STATUS_NO_PIXEL_DATA,
    STATUS_NOT_ACCEPTED,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_UNDECODABLE,
    ReceivedImage,
    ScpConfig,
    StorageSCP,
    StoreRefused,
)
from xraytriage.dicom.scu import Destination, SendResult, echo, parse_destination, send_datasets

__all__ = [
    "STATUS_NOT_ACCEPTED",
    "STATUS_NO_PIXEL_DATA",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "STATUS_UNDECODABLE",
    "Destination",
    "FindingResult",
    "ModelInfo",
    "ReceivedImage",
    "ScpConfig",
    "SendResult",
    "StorageSCP",
    "StoreRefused",
    "build_secondary_capture",
    "build_structured_report",
    "check_acceptable",
    "echo",
    "parse_destination",
    "send_datasets",
]
