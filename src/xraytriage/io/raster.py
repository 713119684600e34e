"""PNG / JPEG / TIFF via Pillow: 8- and 16-bit, L/RGB/RGBA/P all become one float channel.

The header's size is checked against the pixel limit before decoding; with ``max_side`` a
large image is decoded reduced (JPEG in the DCT domain by ``draft``, the others by an integer
box average straight after decoding, before any float copy), so a 7700 px file costs what
its reduced copy costs, not four float copies of 59 million pixels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from xraytriage.errors import UnreadableImageError
from xraytriage.io.limits import block_mean, check_pixel_budget, reduction_factor

Image.MAX_IMAGE_PIXELS = None  # we apply our own limit from the header, before decoding

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}
"""Bytes per pixel Pillow allocates for a mode (16-bit modes 2, everything else 4)."""


def mode_bytes(mode: str) -> int:
    return 2 if mode in SIXTEEN_BIT else MODE_BYTES.get(mode, 4)


def check_raster_header(image: Image.Image, path: str | Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an opened (not decoded) image, or :class:`ImageTooLargeError`."""
    width, height = image.size
    check_pixel_budget(path, width, height, max_pixels, bits=8 * mode_bytes(image.mode))
    return width, height


def non_finite_problem(bad: int, total: int) -> str:
    return (
        f"{bad:,} of {total:,} pixel values are not finite numbers (NaN or infinity); "
        "refusing to guess what they should be"
    )


def _to_unit_float(img: Image.Image, path: Path) -> tuple[np.ndarray, int]:
    """Pixels as float32 in [0, 1] and the bit depth they came from."""
    mode = img.mode
    if mode in SIXTEEN_BIT:
        return np.asarray(img, dtype=np.float32) / 65535.0, 16
    if mode == "I":  # 16-bit PNGs decode to 32-bit int in Pillow
        arr = np.asarray(img, dtype=np.float32)
        if arr.min() >= 0 and arr.max() <= 65535:
            return arr / 65535.0, 16
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / max(hi - lo, 1.0), 32
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        bad = arr.size - int(np.isfinite(arr).sum())
        if bad:  # zeros in their place would make a blank-looking image the model scores anyway
            raise UnreadableImageError(path, non_finite_problem(bad, arr.size))
        lo, hi = float(arr.min()), float(arr.max())
        return (arr - lo) / max(hi - lo, 1e-12), 32
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    if mode != "L":
        img = img.convert("L")
    return np.asarray(img, dtype=np.float32) / 255.0, 8


def _reduce(img: Image.Image, factor: int) -> tuple[Image.Image | None, np.ndarray | None]:
    """Reduced by ``factor`` (box average): a Pillow image, or float [0, 1] for 16-bit modes
    (which Pillow cannot reduce)."""
    if factor <= 1:
        return img, None
    if img.mode in SIXTEEN_BIT:
        return None, block_mean(np.asarray(img), factor) / 65535.0
    if img.mode in ("P", "1"):
        img = img.convert("RGBA" if "transparency" in img.info else "L")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    return img.reduce(factor), None


def read_raster(
    path: Path, max_pixels: int, max_side: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode ``path``; with ``max_side``, reduced by the largest integer factor that keeps the
    longest side at least ``max_side`` (``meta['reduced_by']``; ``width``/``height`` stay the file's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(path)
        except Exception as exc:
            raise UnreadableImageError(path, f"not a readable image: {exc}") from None
        with img:
            width, height = check_raster_header(img, path, max_pixels)
            source_mode = img.mode
            source_format = (img.format or "").lower()
            factor = reduction_factor(width, height, max_side)
            if factor > 1 and img.format == "JPEG":
                img.draft(img.mode, (math.ceil(width / factor), math.ceil(height / factor)))
            try:
                img.load()
            except OSError as exc:
                raise UnreadableImageError(path, f"truncated or corrupt {img.format} data: {exc}") from None
            drafted = width / img.size[0]  # 1, or the DCT scale draft chose
            img = ImageOps.exif_transpose(img) or img
            full = (round(img.size[0] * drafted), round(img.size[1] * drafted))  # after EXIF rotation
            reduced, pixels16 = _reduce(img, reduction_factor(*img.size, max_side))
            if pixels16 is not None:
                pixels, bits = pixels16, 16
            else:
                assert reduced is not None
                pixels, bits = _to_unit_float(reduced, path)
    meta: dict[str, Any] = {"mode": source_mode, "bit_depth": bits, "format": source_format}
    if pixels.shape != (full[1], full[0]):
        meta["width"], meta["height"] = full
        meta["reduced_by"] = round(max(full) / max(pixels.shape), 3)
    return pixels, meta
