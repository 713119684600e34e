"""DICOM radiographs with the standard grayscale pixel chain.

Order (PS3.3 C.11): stored values -> Modality LUT (Rescale Slope/Intercept or LUT) -> VOI
(VOI LUT Sequence, else Window Center/Width with its VOI LUT Function, else the full range of
the data) -> Presentation: MONOCHROME1 or Presentation LUT Shape INVERSE invert the result once.
(In DX objects ``INVERSE`` is the shape that *accompanies* MONOCHROME1: it describes the same
single inversion, so the two are combined with OR, never applied twice.)
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from xraytriage.errors import (
    ImageReadError,
    ImageTooLargeError,
    NoPixelDataError,
    UnreadableImageError,
    UnsupportedModalityError,
)
from xraytriage.io.limits import block_mean, check_pixel_budget, reduction_factor

RADIOGRAPH_MODALITIES = {"CR", "DX", "RG", "DR", "XR", "OT", "PX"}
"""Projection radiography, plus OT (secondary captures of radiographs are often OT)."""

META_TAGS = {
    "patient_id": "PatientID",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "sop_class_uid": "SOPClassUID",
    "accession": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view_position": "ViewPosition",
    "photometric": "PhotometricInterpretation",
    "patient_sex": "PatientSex",
    "patient_age": "PatientAge",
    "laterality": "ImageLaterality",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
    "priority": "RequestedProcedurePriority",
}


def dicom_metadata(ds: pydicom.Dataset) -> dict[str, Any]:
    """The identifiers and descriptors triage needs, as plain strings ('' when absent)."""
    meta: dict[str, Any] = {}
    for key, keyword in META_TAGS.items():
        value = ds.get(keyword, "")
        meta[key] = "" if value is None else str(value).strip()
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) >= 2:
        meta["pixel_spacing"] = (float(spacing[0]), float(spacing[1]))
    meta["transfer_syntax"] = (
        str(getattr(ds.file_meta, "TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    )
    return meta


def _window(arr: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI windowing to [0, 1] (PS3.3 C.11.2.1.2/3)."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        width = max(width, 1e-6)
        return np.clip((arr - center) / width + 0.5, 0.0, 1.0)
    width = max(width, 1.0)
    return np.clip((arr - (center - 0.5)) / (width - 1.0 if width > 1 else 1.0) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0]
    return float(value)


def _apply_voi(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq:
        from pydicom.pixels import apply_voi

        item = voi_seq[0]
        out = apply_voi(arr, ds, index=0).astype(np.float32)
        descriptor = item.LUTDescriptor
        bits = int(descriptor[2]) if len(descriptor) > 2 and int(descriptor[2]) > 0 else 16
        return np.clip(out / float(2**bits - 1), 0.0, 1.0), "voi_lut"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if width > 0:
            return _window(arr, center, width, str(ds.get("VOILUTFunction", "LINEAR"))), "window"
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / max(hi - lo, 1e-6), "full_range"


def check_header(
    ds: pydicom.Dataset, path: str | Path, max_pixels: int, has_pixels: bool | None = None
) -> dict[str, Any]:
    """Everything about a radiograph that its header can tell, before any pixel is decoded:
    pixel data present (``has_pixels``, default: in ``ds``), a projection-radiography modality,
    a non-empty size whose Rows x Columns x frames x samples x bits are within the limit
    (:func:`~xraytriage.io.limits.check_pixel_budget`). Returns the metadata; raises the typed
    error that names ``path``."""
    if has_pixels is None:
        has_pixels = any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if not any(tag in ds for tag in ("SOPClassUID", "Modality", "StudyInstanceUID")):
            raise UnreadableImageError(path, "not a DICOM file (no recognisable DICOM header)")
        raise NoPixelDataError(
            path, f"DICOM object has no pixel data (SOP class {ds.get('SOPClassUID', '?')})"
        )
    meta = dicom_metadata(ds)
    modality = meta["modality"].upper()
    if modality and modality not in RADIOGRAPH_MODALITIES:
        raise UnsupportedModalityError(
            path, f"modality {modality} is not a projection radiograph (accepted: CR, DX, RG, OT...)"
        )
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows * cols == 0:
        raise UnreadableImageError(path, "DICOM header declares an empty image (Rows or Columns is 0)")
    frames = max(_int(ds, "NumberOfFrames", 1), 1)
    check_pixel_budget(
        path,
        cols,
        rows,
        max_pixels,
        frames=frames,
        samples=_int(ds, "SamplesPerPixel", 1),
        bits=_int(ds, "BitsAllocated", 16),
    )
    meta["frames"] = frames
    return meta


def _int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    value = ds.get(keyword, default)
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else default
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        return default


# --- reading with bounded memory ---------------------------------------------------------

HEADER_BUDGET = 16 * 1024 * 1024
"""Most bytes a deflated data set may inflate to before its pixel data starts."""

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _at_pixels(tag: Any, _vr: Any, _length: int) -> bool:
    return int(tag) in PIXEL_TAGS


def inflate_bounded(compressed: bytes, limit: int) -> tuple[bytes, bool]:
    """Raw-deflate ``compressed`` to at most ``limit`` bytes; (output, complete). Never
    allocates more than ``limit`` bytes however much the stream would expand."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(compressed, limit)
    if inflater.eof:
        return out, True
    more = inflater.decompress(inflater.unconsumed_tail, 1) if inflater.unconsumed_tail else inflater.flush(1)
    return out, not more


def _next_tag(fp: BinaryIO) -> int | None:
    """The tag at ``fp``'s position (little endian), without moving it."""
    position = fp.tell()
    raw = fp.read(4)
    fp.seek(position)
    if len(raw) < 4:
        return None
    group, element = struct.unpack("<HH", raw)
    return (group << 16) | element


@dataclass
class _Parsed:
    dataset: pydicom.Dataset
    has_pixels: bool


def _parse(
    fp: BinaryIO, path: str | Path, with_pixels: bool, max_pixels: int
) -> tuple[_Parsed, dict[str, Any]]:
    """Header first (checked), then, if asked, the whole data set. A deflated data set is
    inflated with a bound: first up to :data:`HEADER_BUDGET`, then up to what the header
    declares, so a deflate bomb is refused without being expanded."""
    start = fp.tell()
    preamble = read_preamble(fp, force=True)
    file_meta = _read_file_meta_info(fp)
    syntax = file_meta.get("TransferSyntaxUID")
    if syntax != DeflatedExplicitVRLittleEndian:
        fp.seek(start)
        header = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        has_pixels = _next_tag(fp) in PIXEL_TAGS
        meta = check_header(header, path, max_pixels, has_pixels)
        if not with_pixels:
            return _Parsed(header, has_pixels), meta
        fp.seek(start)
        return _Parsed(pydicom.dcmread(fp, force=True), True), meta
    compressed = fp.read()
    inflated, complete = inflate_bounded(compressed, HEADER_BUDGET)
    body = io.BytesIO(inflated)
    header = _file_dataset(path, read_dataset(body, False, True, stop_when=_at_pixels), preamble, file_meta)
    has_pixels = _next_tag(body) in PIXEL_TAGS
    if not has_pixels and not complete:
        raise ImageTooLargeError(
            path,
            f"deflated DICOM inflates to over {HEADER_BUDGET:,} bytes before any pixel data "
            "(a decompression bomb?)",
        )
    meta = check_header(header, path, max_pixels, has_pixels)
    if not with_pixels:
        return _Parsed(header, has_pixels), meta
    declared = (
        _int(header, "Rows")
        * _int(header, "Columns")
        * max(_int(header, "NumberOfFrames", 1), 1)
        * max(_int(header, "SamplesPerPixel", 1), 1)
        * max(-(-_int(header, "BitsAllocated", 16) // 8), 1)
    )
    limit = body.tell() + 12 + declared + 1024 * 1024  # pixel element header, pixels, a trailer
    del inflated, body
    inflated, complete = inflate_bounded(compressed, limit)
    if not complete:
        raise ImageTooLargeError(
            path, f"deflated DICOM inflates to more than the {limit:,} bytes its header declares"
        )
    full = read_dataset(io.BytesIO(inflated), False, True)
    return _Parsed(_file_dataset(path, full, preamble, file_meta), True), meta


def _file_dataset(
    path: str | Path, ds: pydicom.Dataset, preamble: bytes | None, file_meta: Any
) -> FileDataset:
    out = FileDataset(str(path), ds, preamble, file_meta, False, True)
    out.set_original_encoding(False, True, ds._character_set)
    return out


def _open(source: str | Path | bytes) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    return open(source, "rb")


PARSE_ERRORS = (
    InvalidDicomError,
    EOFError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
    zlib.error,
    struct.error,
)
"""What pydicom, zlib and struct raise on a file that is not (readable) DICOM."""


def read_dicom_header(
    source: str | Path | bytes, max_pixels: int, name: str | Path | None = None
) -> tuple[pydicom.Dataset, dict[str, Any]]:
    """The data set up to its pixel data and the checked metadata, from a file or its bytes
    (a C-STORE's encoded data set): refuses, naming ``name`` (default: the path), a file that
    is not a radiograph, has no pixel data or declares more than ``max_pixels`` (Rows x
    Columns x frames x samples x bits), before any pixel is decoded or inflated."""
    label = name if name is not None else ("DICOM data" if isinstance(source, (bytes, bytearray)) else source)
    try:
        with _open(source) as fp:
            parsed, meta = _parse(fp, label, False, max_pixels)
    except ImageReadError:
        raise
    except PARSE_ERRORS as exc:
        raise UnreadableImageError(label, f"not a readable DICOM file: {exc}") from None
    return parsed.dataset, meta


def truncation_problem(source: str | Path | bytes) -> str | None:
    """Why a DICOM file (a path, or its bytes) ends before its own encoding says it should.

    pydicom stops quietly at the end of a cut file (and drops the whole data set when the cut
    falls inside pixel data), which would otherwise read as "not a DICOM file" or "no pixel
    data". This walks the top-level elements (values skipped, not read) and checks that each
    one ends inside the file. Only files with the DICM preamble are judged; deflated data sets
    are not (their length is unknowable without inflating them). None when nothing is cut.
    """
    import io

    from pydicom.datadict import keyword_for_tag
    from pydicom.filereader import data_element_generator
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

    fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    end = 132
    with fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        if fh.read(132)[128:132] != b"DICM":
            return None

        def cut(where: str, at: int) -> str:
            return f"truncated DICOM file: it ends at byte {size:,}, inside {where} (from byte {at:,})"

        try:
            syntax = ""
            for elem in data_element_generator(
                fh, False, True, stop_when=lambda tag, _vr, _n: tag.group != 2
            ):
                if elem.value is not None and len(elem.value) < elem.length:
                    return cut("the file meta information", elem.value_tell)
                if elem.tag == 0x00020010:
                    syntax = elem.value.decode("ascii", "replace").strip("\0 ")
                end = fh.tell()
            if syntax == DeflatedExplicitVRLittleEndian:
                return None
            implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
            for elem in data_element_generator(fh, implicit, little, defer_size=256):
                value_cut = elem.value is not None and len(elem.value) < elem.length != 0xFFFFFFFF
                if value_cut or fh.tell() > size:
                    name = keyword_for_tag(elem.tag) or "element"
                    return cut(f"{name} {elem.tag}", elem.value_tell)
                end = fh.tell()
        except EOFError:
            return cut("a sequence or the encapsulated pixel data (no end delimiter)", end)
        except (ValueError, KeyError, NotImplementedError, TypeError):
            return None
    if 0 < size - end < 8:
        return cut("the header of the next element", end)
    return None


def read_dicom(path: Path, max_pixels: int, max_side: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Pixels of the first frame through the grayscale chain. The header is checked before
    anything is decoded; only frame 0 is decoded; with ``max_side`` the frame is reduced by an
    integer box average (``meta['reduced_by']``) before the float pixel chain runs on it."""
    try:
        with open(path, "rb") as fp:
            parsed, meta = _parse(fp, path, True, max_pixels)
    except (UnreadableImageError, NoPixelDataError):
        problem = truncation_problem(path)  # a cut file reads as an empty or pixel-less one
        if problem:
            raise UnreadableImageError(path, problem) from None
        raise
    except ImageReadError:
        raise
    except PARSE_ERRORS as exc:
        raise UnreadableImageError(
            path, truncation_problem(path) or f"not a readable DICOM file: {exc}"
        ) from None
    ds = parsed.dataset
    frames = meta["frames"]
    try:
        if frames > 1:
            from pydicom.pixels import pixel_array

            arr = pixel_array(ds, index=0)
        else:
            arr = ds.pixel_array
    except Exception as exc:
        syntax = meta.get("transfer_syntax", "?")
        raise UnreadableImageError(
            path, truncation_problem(path) or f"cannot decode pixel data (transfer syntax {syntax}): {exc}"
        ) from None
    if frames > 1 and arr.ndim >= 3 and arr.shape[0] == frames:  # a decoder that ignored index
        arr = arr[0]
    rows, cols = arr.shape[:2]
    factor = reduction_factor(cols, rows, max_side)
    if factor > 1:
        meta["width"], meta["height"], meta["reduced_by"] = cols, rows, factor
    photometric = meta["photometric"].upper()
    if arr.ndim == 3:  # colour radiograph (rare): convert to luminance after the colour space
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = block_mean(arr[..., :3], factor) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        pixels = (arr - lo) / max(hi - lo, 1e-6)
        meta["voi"] = "colour"
    else:
        from pydicom.pixels import apply_modality_lut

        if factor > 1 and "ModalityLUTSequence" not in ds:
            arr = block_mean(arr, factor)  # rescale slope/intercept is linear: reduce first
            factor = 1
        values = block_mean(apply_modality_lut(arr, ds).astype(np.float32), factor)
        del arr
        pixels, meta["voi"] = _apply_voi(values, ds)
        shape = str(ds.get("PresentationLUTShape", "")).upper()
        meta["inverted"] = photometric == "MONOCHROME1" or shape == "INVERSE"
        if meta["inverted"]:
            pixels = 1.0 - pixels
    return pixels.astype(np.float32), meta
