"""DICOM radiographs with the standard grayscale pixel chain.

Order (PS3.3 C.11): stored values -> Modality LUT (Rescale Slope/Intercept or LUT) -> VOI
(VOI LUT Sequence, else Window Center/Width with its VOI LUT Function, else the full range of
the data) -> Presentation: MONOCHROME1 or Presentation LUT Shape INVERSE invert the result once.
(In DX objects ``INVERSE`` is the shape that *accompanies* MONOCHROME1: it describes the same
single inversion, so the two are combined with OR, never applied twice.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from xraytriage.errors import (
    ImageTooLargeError,
    NoPixelDataError,
    UnreadableImageError,
    UnsupportedModalityError,
)

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


def check_header(ds: pydicom.Dataset, path: str | Path, max_pixels: int) -> dict[str, Any]:
    """Everything about a radiograph that its header can tell, before any pixel is decoded:
    pixel data present, a projection-radiography modality, a non-empty size within
    ``max_pixels``. Returns the metadata; raises the typed error that names ``path``."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
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
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols == 0:
        raise UnreadableImageError(path, "DICOM header declares an empty image (Rows or Columns is 0)")
    if rows * cols > max_pixels:
        raise ImageTooLargeError(
            path, f"declares {cols}x{rows} = {rows * cols:,} pixels, over the limit of {max_pixels:,}"
        )
    return meta


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


def read_dicom(path: Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise UnreadableImageError(
            path, truncation_problem(path) or f"not a readable DICOM file: {exc}"
        ) from None
    try:
        meta = check_header(ds, path, max_pixels)
    except (UnreadableImageError, NoPixelDataError):
        problem = truncation_problem(path)  # a cut file reads as an empty or pixel-less one
        if problem:
            raise UnreadableImageError(path, problem) from None
        raise
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        syntax = meta.get("transfer_syntax", "?")
        raise UnreadableImageError(
            path, truncation_problem(path) or f"cannot decode pixel data (transfer syntax {syntax}): {exc}"
        ) from None
    if frames > 1 and arr.ndim >= 3 and arr.shape[0] == frames:
        arr = arr[0]
        meta["frames"] = frames
    photometric = meta["photometric"].upper()
    if arr.ndim == 3:  # colour radiograph (rare): convert to luminance after the colour space
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        pixels = (arr - lo) / max(hi - lo, 1e-6)
        meta["voi"] = "colour"
    else:
        from pydicom.pixels import apply_modality_lut

        values = apply_modality_lut(arr, ds).astype(np.float32)
        pixels, meta["voi"] = _apply_voi(values, ds)
        shape = str(ds.get("PresentationLUTShape", "")).upper()
        meta["inverted"] = photometric == "MONOCHROME1" or shape == "INVERSE"
        if meta["inverted"]:
            pixels = 1.0 - pixels
    return pixels.astype(np.float32), meta
