"""PNG / JPEG / TIFF via Pillow: 8- and 16-bit, L/RGB/RGBA/P all become one float channel."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from xraytriage.errors import ImageTooLargeError, UnreadableImageError

Image.MAX_IMAGE_PIXELS = None  # we apply our own limit from the header, before decoding


def non_finite_problem(bad: int, total: int) -> str:
    return (
        f"{bad:,} of {total:,} pixel values are not finite numbers (NaN or infinity); "
        "refusing to guess what they should be"
    )


def _to_unit_float(img: Image.Image, path: Path) -> tuple[np.ndarray, int]:
    """Pixels as float32 in [0, 1] and the bit depth they came from."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
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


def read_raster(path: Path, max_pixels: int) -> tuple[np.ndarray, dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(path)
        except Exception as exc:
            raise UnreadableImageError(path, f"not a readable image: {exc}") from None
        with img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    path,
                    f"declares {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
                )
            source_mode = img.mode
            source_format = (img.format or "").lower()
            try:
                img.load()
            except OSError as exc:
                raise UnreadableImageError(path, f"truncated or corrupt {img.format} data: {exc}") from None
            img = ImageOps.exif_transpose(img) or img
            pixels, bits = _to_unit_float(img, path)
    meta = {"mode": source_mode, "bit_depth": bits, "format": source_format}
    return pixels, meta
