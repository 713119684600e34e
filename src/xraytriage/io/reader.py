"""The one entry point: ``read_radiograph(path) -> Radiograph``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraytriage.errors import ImageReadError, UnreadableImageError
from xraytriage.io.formats import ImageFormat, sniff_bytes

DEFAULT_MAX_PIXELS = 60_000_000
"""Decompression-bomb limit: the largest real radiographs are ~4300x3500 (15 MP)."""


@dataclass
class Radiograph:
    """A decoded radiograph: ``pixels`` is float32 HxW in [0, 1], bright = dense."""

    pixels: np.ndarray
    path: str
    format: ImageFormat
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def read_radiograph(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> Radiograph:
    """Read PNG/JPEG/TIFF/DICOM into a :class:`Radiograph`.

    The declared size is checked against ``max_pixels`` before decoding. With ``max_side``, an
    image more than twice that size is decoded reduced by the largest integer factor that keeps
    its longest side at least ``max_side`` (``meta['reduced_by']``; ``meta['width']`` and
    ``['height']`` stay the file's), so memory follows what the caller needs, not the file.

    Raises a subclass of :class:`~xraytriage.errors.ImageReadError` naming the file for every
    problem with the input (missing, empty, truncated, not an image, wrong modality, too large).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise UnreadableImageError(path, "is a folder, not a file")
        if size == 0:
            raise UnreadableImageError(path, "file is empty (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(136)
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found") from None
    except PermissionError:
        raise UnreadableImageError(path, "permission denied") from None
    except IsADirectoryError:
        raise UnreadableImageError(path, "is a folder, not a file") from None

    fmt = sniff_bytes(head)
    if fmt is ImageFormat.UNKNOWN and path.suffix.lower() in (".dcm", ".dicom", ".dic"):
        fmt = ImageFormat.DICOM  # let pydicom have a go at headerless files; it names the problem
    try:
        if fmt is ImageFormat.DICOM:
            from xraytriage.io.dicom import read_dicom

            pixels, meta = read_dicom(path, max_pixels, max_side)
        elif fmt is ImageFormat.UNKNOWN:
            raise UnreadableImageError(
                path, f"not a PNG, JPEG, TIFF or DICOM file (starts with {head[:8]!r})"
            )
        else:
            from xraytriage.io.raster import read_raster

            pixels, meta = read_raster(path, max_pixels, max_side)
    except ImageReadError:
        raise
    except MemoryError:
        raise UnreadableImageError(path, "not enough memory to decode the image") from None
    except Exception as exc:  # any decoder failure becomes an error that names the file
        raise UnreadableImageError(path, f"cannot decode {fmt.value} image: {exc}") from exc
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise UnreadableImageError(path, f"decoded to an unusable shape {pixels.shape}")
    finite = int(np.isfinite(pixels).sum())
    if finite != pixels.size:  # e.g. float DICOM pixel data; never scored as if they were zeros
        from xraytriage.io.raster import non_finite_problem

        raise UnreadableImageError(path, non_finite_problem(pixels.size - finite, pixels.size))
    meta.setdefault("width", int(pixels.shape[1]))
    meta.setdefault("height", int(pixels.shape[0]))
    return Radiograph(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32), path=str(path), format=fmt, meta=meta
    )
