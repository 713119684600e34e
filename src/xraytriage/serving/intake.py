"""Checks an upload before it is acknowledged: by content, never by file name.

Cheap checks only (the worker decodes the pixels): the format from the first bytes, the
header (PNG/JPEG/TIFF via Pillow without decoding; DICOM via pydicom without the pixels) for
the size limit, the DICOM modality, the presence of pixel data and the UIDs that group images
into studies. A file that fails gets an :class:`UploadRejected` naming it and the problem.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from xraytriage.errors import XRayTriageError
from xraytriage.io.formats import ImageFormat, sniff_bytes
from xraytriage.io.reader import DEFAULT_MAX_PIXELS

ACCEPTED_FORMATS = (ImageFormat.PNG, ImageFormat.JPEG, ImageFormat.TIFF, ImageFormat.DICOM)


class UploadRejected(XRayTriageError):
    """An upload that is not accepted; ``status`` is the HTTP status that fits the problem."""

    def __init__(self, filename: str, problem: str, status: int = 422) -> None:
        self.filename = filename
        self.problem = problem
        self.status = status
        super().__init__(f"{filename}: {problem}")


@dataclass
class UploadInfo:
    format: str
    width: int | None = None
    height: int | None = None
    study_uid: str | None = None
    sop_instance_uid: str | None = None
    modality: str = ""
    description: str = ""
    # DICOM header fields the worklist shows to match studies with the PACS (never logged)
    patient_id: str = ""
    accession: str = ""
    patient_age: str = ""
    patient_sex: str = ""
    study_date: str = ""
    view_position: str = ""
    body_part: str = ""


def inspect_upload(data: bytes, filename: str, max_bytes: int | None = None) -> UploadInfo:
    """What the file is, or :class:`UploadRejected` saying why it is not accepted."""
    if not data:
        raise UploadRejected(filename, "file is empty (0 bytes)", 422)
    if max_bytes is not None and len(data) > max_bytes:
        raise UploadRejected(
            filename, f"file is {len(data):,} bytes, over the limit of {max_bytes:,} bytes", 413
        )
    fmt = sniff_bytes(data[:136])
    if fmt not in ACCEPTED_FORMATS:
        raise UploadRejected(
            filename, f"not a PNG, JPEG, TIFF or DICOM file by its content (starts with {data[:8]!r})", 415
        )
    if fmt is ImageFormat.DICOM:
        return _inspect_dicom(data, filename)
    return _inspect_raster(data, filename, fmt)


def _inspect_raster(data: bytes, filename: str, fmt: ImageFormat) -> UploadInfo:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image.verify()  # structure and checksums, without decoding the pixels
    except Image.DecompressionBombError as exc:
        raise UploadRejected(filename, f"image too large: {exc}", 413) from None
    except Exception as exc:
        raise UploadRejected(filename, f"cannot read the {fmt.value} file: {exc}", 422) from None
    if width * height > DEFAULT_MAX_PIXELS:
        raise UploadRejected(
            filename, f"image is {width}x{height} pixels, over the limit of {DEFAULT_MAX_PIXELS:,}", 413
        )
    return UploadInfo(format=fmt.value, width=width, height=height)


def _inspect_dicom(data: bytes, filename: str) -> UploadInfo:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from xraytriage.errors import ImageReadError, ImageTooLargeError
    from xraytriage.io.dicom import check_header, truncation_problem

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        problem = truncation_problem(data) or f"not a readable DICOM file: {exc}"
        raise UploadRejected(filename, problem, 422) from None
    try:  # the same header checks the reader makes (modality, pixel data, size)
        meta = check_header(ds, filename, DEFAULT_MAX_PIXELS)
    except ImageReadError as exc:
        status = 413 if isinstance(exc, ImageTooLargeError) else 422
        problem = exc.problem if status == 413 else (truncation_problem(data) or exc.problem)
        raise UploadRejected(filename, problem, status) from None
    description = " ".join(meta[k] for k in ("modality", "body_part", "view_position") if meta[k]).strip()
    return UploadInfo(
        format=ImageFormat.DICOM.value,
        width=int(ds.Columns),
        height=int(ds.Rows),
        study_uid=meta["study_uid"] or None,
        sop_instance_uid=meta["sop_uid"] or None,
        modality=meta["modality"].upper(),
        description=description,
        patient_id=meta["patient_id"],
        accession=meta["accession"],
        patient_age=meta["patient_age"],
        patient_sex=meta["patient_sex"],
        study_date=meta["study_date"],
        view_position=meta["view_position"].upper(),
        body_part=meta["body_part"].upper(),
    )


def _short(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:15]


def study_id_for(info: UploadInfo, digest: str, study_key: str | None = None) -> str:
    """Stable study id: the DICOM StudyInstanceUID, else a client's study key, else the file itself.

    Stable ids make the same file (or study) sent twice land in the same study.
    """
    if info.study_uid:
        return "d" + _short("dicom:" + info.study_uid)
    if study_key:
        return "u" + _short("upload:" + study_key.strip())
    return "i" + digest[:15]
