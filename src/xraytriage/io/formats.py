"""Recognise a file's format by its content, never by its extension alone."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".dic"}


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    TIFF = "tiff"
    DICOM = "dicom"
    UNKNOWN = "unknown"


def sniff_bytes(head: bytes) -> ImageFormat:
    """Format from the first 132+ bytes of a file."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageFormat.TIFF
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ImageFormat.DICOM
    # DICOM without the 128-byte preamble: starts with a group 0x0002 or 0x0008 tag (little endian).
    if len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00":
        return ImageFormat.DICOM
    return ImageFormat.UNKNOWN


def sniff_format(path: str | Path) -> ImageFormat:
    with open(path, "rb") as fh:
        return sniff_bytes(fh.read(136))
