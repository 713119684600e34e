"""Checks an upload before it is acknowledged: by content, never by file name.

Cheap checks only (the worker decodes the pixels): the format from the first bytes, the
header (PNG/JPEG/TIFF via Pillow without decoding; DICOM up to its pixel data, a deflated one
inflated with a bound) for the pixel limit (width x height, and for DICOM x frames x bits), the DICOM modality, the presence of pixel data and the UIDs that group images
into studies. A file that fails gets an :class:`UploadRejected` naming it and the problem.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from xraytriage.errors import UploadRejected
from xraytriage.io.formats import ImageFormat, sniff_bytes
from xraytriage.io.reader import DEFAULT_MAX_PIXELS

ACCEPTED_FORMATS = (ImageFormat.PNG, ImageFormat.JPEG, ImageFormat.TIFF, ImageFormat.DICOM)


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


def inspect_upload(
    source: bytes | Path,
    filename: str,
    max_bytes: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> UploadInfo:
    """What the file (its bytes, or the temporary file an upload streamed into) is, or
    :class:`UploadRejected` saying why it is not accepted. Reads headers only: the declared
    size is checked against ``max_pixels`` before anything is decoded or inflated."""
    size = len(source) if isinstance(source, (bytes, bytearray)) else Path(source).stat().st_size
    if not size:
        raise UploadRejected(filename, "file is empty (0 bytes)", 422)
    if max_bytes is not None and size > max_bytes:
        raise UploadRejected(filename, f"file is {size:,} bytes, over the limit of {max_bytes:,} bytes", 413)
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:136])
    else:
        with open(source, "rb") as fh:
            head = fh.read(136)
    fmt = sniff_bytes(head)
    if fmt not in ACCEPTED_FORMATS:
        raise UploadRejected(
            filename, f"not a PNG, JPEG, TIFF or DICOM file by its content (starts with {head[:8]!r})", 415
        )
    if fmt is ImageFormat.DICOM:
        return _inspect_dicom(source, filename, max_pixels)
    return _inspect_raster(source, filename, fmt, max_pixels)


def _opened(source: bytes | Path):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")


def _inspect_raster(source: bytes | Path, filename: str, fmt: ImageFormat, max_pixels: int) -> UploadInfo:
    from PIL import Image

    from xraytriage.errors import ImageReadError
    from xraytriage.io.raster import check_raster_header

    try:
        with _opened(source) as fh, Image.open(fh) as image:
            width, height = check_raster_header(image, filename, max_pixels)
            image.verify()  # structure and checksums, without decoding the pixels
    except ImageReadError as exc:
        raise UploadRejected(filename, exc.problem, 413) from None
    except Image.DecompressionBombError as exc:
        raise UploadRejected(filename, f"image too large: {exc}", 413) from None
    except Exception as exc:
        raise UploadRejected(filename, f"cannot read the {fmt.value} file: {exc}", 422) from None
    return UploadInfo(format=fmt.value, width=width, height=height)


def _inspect_dicom(source: bytes | Path, filename: str, max_pixels: int) -> UploadInfo:
    from xraytriage.errors import ImageReadError, ImageTooLargeError
    from xraytriage.io.dicom import read_dicom_header, truncation_problem

    try:  # the same header checks the reader makes (modality, pixel data, size, frames, bits)
        ds, meta = read_dicom_header(source, max_pixels, name=filename)
    except ImageReadError as exc:
        status = 413 if isinstance(exc, ImageTooLargeError) else 422
        problem = exc.problem if status == 413 else (truncation_problem(source) or exc.problem)
        raise UploadRejected(filename, problem, status) from None
    cut = truncation_problem(source)  # the header can be whole while the pixel data is cut
    if cut:
        raise UploadRejected(filename, cut, 422)
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
