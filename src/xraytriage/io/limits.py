"""Size limits checked from a file's header, before a single pixel is decoded, and the
integer reduction factor used to decode large images at the size that is actually needed.

A compressed file can declare far more pixels than its size suggests (a 57 KB PNG of
7700 x 7700, a 1.6 MB deflated DICOM holding gigabytes of frames): every reader compares the
declared size with the limit first, so such a file costs a header read, not gigabytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from xraytriage.errors import ImageTooLargeError, UnreadableImageError

BYTES_PER_PIXEL_BUDGET = 2
"""The decoded-bytes limit is ``max_pixels`` pixels of 16 bits (a 16-bit grayscale radiograph)."""


def check_pixel_budget(
    path: str | Path,
    width: int,
    height: int,
    max_pixels: int,
    frames: int = 1,
    samples: int = 1,
    bits: int = 8,
) -> None:
    """Raise :class:`ImageTooLargeError` (naming ``path``) when the declared image is over the
    limit: ``width x height`` over ``max_pixels``, or ``width x height x frames x samples x
    bits`` over ``max_pixels`` 16-bit pixels of decoded data (what decoding would allocate)."""
    width, height, frames, samples, bits = (int(v) for v in (width, height, frames, samples, bits))
    if width <= 0 or height <= 0:
        raise UnreadableImageError(path, f"header declares an empty image ({width}x{height})")
    pixels = width * height
    if pixels > max_pixels:
        raise ImageTooLargeError(
            path, f"declares {width}x{height} = {pixels:,} pixels, over the limit of {max_pixels:,}"
        )
    frames, samples = max(frames, 1), max(samples, 1)
    decoded = pixels * frames * samples * max(math.ceil(bits / 8), 1)
    limit = max_pixels * BYTES_PER_PIXEL_BUDGET
    if decoded > limit:
        raise ImageTooLargeError(
            path,
            f"declares {width}x{height} x {frames} frame(s) x {samples} sample(s) x {bits} bits = "
            f"{decoded:,} bytes of pixel data, over the limit of {limit:,} bytes "
            f"({max_pixels:,} pixels of 16 bits)",
        )


def reduction_factor(width: int, height: int, max_side: int | None) -> int:
    """The largest integer factor that keeps the longest side at least ``max_side`` (1: none)."""
    if not max_side:
        return 1
    return max(1, max(int(width), int(height)) // int(max_side))


def block_mean(array: np.ndarray, factor: int, band_rows: int = 256) -> np.ndarray:
    """Average ``factor x factor`` blocks of a 2-D (or H x W x C) array into float32, a band of
    rows at a time, so the float copy is never the size of the whole input (ragged edges are
    averaged over the pixels they have)."""
    if factor <= 1:
        return np.asarray(array, dtype=np.float32)
    height, width = array.shape[:2]
    out_h, out_w = math.ceil(height / factor), math.ceil(width / factor)
    out = np.empty((out_h, out_w, *array.shape[2:]), dtype=np.float32)
    step = max(1, band_rows // factor) * factor
    cols = np.arange(0, width, factor)
    counts_w = np.minimum(factor, width - cols).astype(np.float32)
    for top in range(0, height, step):
        band = np.asarray(array[top : top + step], dtype=np.float32)
        sums = np.add.reduceat(
            np.add.reduceat(band, np.arange(0, band.shape[0], factor), axis=0), cols, axis=1
        )
        rows = np.minimum(factor, band.shape[0] - np.arange(0, band.shape[0], factor)).astype(np.float32)
        shape = (len(rows), len(cols)) + (1,) * (array.ndim - 2)
        sums /= (rows[:, None] * counts_w[None, :]).reshape(shape)
        out[top // factor : top // factor + len(rows)] = sums
    return out
