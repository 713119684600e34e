"""Overlay pictures: the radiograph, the heatmap in a colour map, the box, the label and probability.

Rendered with Pillow at the image's own resolution, so a box drawn here has the same pixel
coordinates as the row in ``boxes.csv``. The colour is blended in proportion to the heat, so
cold regions show the plain radiograph rather than a blue wash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from xraytriage.explain.boxes import Box

BOX_COLOUR = (0, 255, 0)
TEXT_COLOUR = (255, 255, 255)


def _colour_map(heatmap: np.ndarray, name: str) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps[name](np.clip(heatmap, 0.0, 1.0))[..., :3].astype(np.float32)


def render_overlay(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    box: Box | None = None,
    label: str = "",
    alpha: float = 0.5,
    colour_map: str = "jet",
) -> Image.Image:
    """RGB picture of ``pixels`` (float [0,1] or uint8, H x W) under ``heatmap`` (H x W, [0,1])."""
    pixels = np.asarray(pixels)
    gray = (
        pixels.astype(np.float32) / 255.0
        if pixels.dtype == np.uint8
        else np.clip(pixels.astype(np.float32), 0, 1)
    )
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != gray.shape:
        raise ValueError(f"heatmap shape {heat.shape} differs from image shape {gray.shape}")
    weight = (alpha * np.clip(heat, 0.0, 1.0))[..., None]
    rgb = gray[..., None] * (1.0 - weight) + _colour_map(heat, colour_map) * weight
    image = Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    short = min(image.size)
    if box is not None and box.area > 0:
        line = max(1, short // 200)
        draw.rectangle([box.x, box.y, box.x + box.w - 1, box.y + box.h - 1], outline=BOX_COLOUR, width=line)
    if label:
        size = max(6, short // 24)
        while True:  # shrink until the label fits across the image (tiny images)
            font = ImageFont.load_default(size=size)
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            if right - left <= image.size[0] - 4 or size <= 6:
                break
            size -= 1
        pad = max(1, short // 150)
        draw.rectangle([0, 0, right - left + 2 * pad, bottom - top + 2 * pad], fill=(0, 0, 0))
        draw.text((pad - left, pad - top), label, fill=TEXT_COLOUR, font=font)
    return image


def overlay_label(finding: str, probability: float, threshold: float | None = None) -> str:
    """``"Mass 0.87"``; a ``*`` marks a probability at or above the operating threshold."""
    mark = "*" if threshold is not None and probability >= threshold else ""
    return f"{finding} {probability:.2f}{mark}"


def save_overlay(
    path: str | Path, pixels: np.ndarray, heatmap: np.ndarray, box: Box | None, label: str
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_overlay(pixels, heatmap, box, label).save(path)
    return path
