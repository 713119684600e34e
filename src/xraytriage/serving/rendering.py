"""How the pictures the pages and the API serve are drawn: pure functions from pixels to PNG
(:mod:`~xraytriage.serving.picture_store` decides when, and keeps them beside the blob).

- ``display.png``: the radiograph as the model reads it (DICOM modality LUT, VOI window and
  MONOCHROME1 already applied by :func:`xraytriage.io.read_radiograph`), so it looks right
  without any window/level control; longest side at most ``display_size``.
- ``heat_<finding>.png``: the finding's heatmap (8-bit, display size). From it, on request,
  a transparent layer in the finding's colour (the page toggles it over the image) or a
  burned-in overlay with the box and a legend to the right naming the method, the colour
  scale, the finding, its probability and threshold (the API's picture for other programs and
  the DICOM Secondary Capture); see :mod:`xraytriage.explain.overlay`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from xraytriage.explain.boxes import Box
from xraytriage.sanitize import file_slug
from xraytriage.serving.storage import write_atomic


def finding_file_part(finding: str) -> str:
    return file_slug(finding, fallback="finding")


def display_size_for(height: int, width: int, limit: int) -> tuple[int, int]:
    """(height, width) with the longest side at most ``limit``, aspect kept."""
    scale = min(1.0, limit / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_display(pixels: np.ndarray, limit: int) -> np.ndarray:
    """float [0, 1] H x W -> uint8 at display size."""
    height, width = display_size_for(*pixels.shape, limit)
    image = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8), mode="L")
    if (height, width) != pixels.shape:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(image)


def heat_to_display(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float [0, 1] heatmap at the original size -> uint8 at the display shape."""
    image = Image.fromarray(np.clip(np.rint(heatmap * 255.0), 0, 255).astype(np.uint8), mode="L")
    if image.size != (shape[1], shape[0]):
        image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(image)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over a few % of size
    return buffer.getvalue()


def save_png(path: Path, array: np.ndarray) -> Path:
    """Write a derived picture (rename into place; no fsync: it can always be drawn again)."""
    return write_atomic(path, png_bytes(Image.fromarray(array)), durable=False)


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def heat_layer_png(
    heat: np.ndarray, alpha: float = 0.65, colour_map: str = "jet", finding: str | None = None
) -> bytes:
    """Transparent RGBA layer the page lays over the radiograph: clear below the overlay's heat
    level (30 % of the map's maximum), above it the finding's own colour (the same as in every
    other picture), more opaque as the heat rises. Without ``finding``: ``colour_map`` colours,
    opacity up to ``alpha``, the same clear floor."""
    from xraytriage.explain.overlay import HEAT_LEVEL, heat_layer_rgba

    if finding is not None:
        return png_bytes(Image.fromarray(heat_layer_rgba(heat, finding), mode="RGBA"))
    from matplotlib import colormaps

    values = heat.astype(np.float32) / 255.0
    rgba = colormaps[colour_map](values)
    relative = values / max(float(values.max()), 1e-6)
    rgba[..., 3] = np.where(relative >= HEAT_LEVEL, alpha * relative, 0.0)
    return png_bytes(Image.fromarray(np.rint(rgba * 255.0).astype(np.uint8), mode="RGBA"))


def overlay_image(
    display: np.ndarray,
    heat: np.ndarray,
    box: Box | None,
    label: str,
    *,
    finding: str | None = None,
    probability: float | None = None,
    threshold: float | None = None,
    method: str = "Grad-CAM",
) -> Image.Image:
    """The radiograph with the finding's heat (clear below the level), its box and the legend
    (method, colour scale, finding, probability, threshold) to the right (RGB). The finding
    and probability come from the keywords, or from ``label`` ("Mass 0.87*")."""
    from xraytriage.explain.overlay import render_overlay

    return render_overlay(
        display,
        heat.astype(np.float32) / 255.0,
        box,
        label,
        finding=finding,
        probability=probability,
        threshold=threshold,
        method=method,
    )


def scale_box(box: dict | None, width: int, height: int, display_shape: tuple[int, int]) -> Box | None:
    """A box stored in original pixels, in display pixels."""
    if not box:
        return None
    sy, sx = display_shape[0] / max(height, 1), display_shape[1] / max(width, 1)
    return Box(box["x"] * sx, box["y"] * sy, box["w"] * sx, box["h"] * sy, box.get("score", 1.0))
