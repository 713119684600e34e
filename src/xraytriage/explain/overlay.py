"""Overlay pictures people can read: the radiograph, each finding's heat in its own colour, its
boxes, and a legend that says what the colours mean.

- **Transparent below a level**: where a finding's heat is under :data:`HEAT_LEVEL` of its
  map's maximum the radiograph shows unchanged (those pixels are exactly the grey image), so
  the colour marks only where the evidence is; above it the finding's colour is laid on, more
  opaque and brighter as the heat rises to the maximum.
- **One colour per finding**, the same everywhere (:func:`finding_colour`: a fixed palette
  keyed by the finding's canonical name), so two findings drawn on one image can be told apart
  and a colour means the same finding in the CLI, triage, web and DICOM pictures.
- **A legend** to the right of the image: the method that made the map ("Grad-CAM",
  "localiser"), what the colour scale means ("relative evidence for <finding>, low -> high":
  a Grad-CAM map is normalised per image, so it ranks regions, it is no probability), and per
  finding its colour scale, its probability and its operating threshold.
- **Boxes** in the finding's colour with a small label.

Rendered with Pillow at the image's own resolution and the image at the top left, so a box
drawn here has the same pixel coordinates as the row in ``boxes.csv``; the legend only widens
the picture (and lengthens it where a tiny image is shorter than the legend).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from xraytriage.explain.boxes import Box
from xraytriage.labels import canonical_label

HEAT_LEVEL = 0.3
"""Heat below this fraction of a map's maximum is not drawn: the plain radiograph shows."""

OPACITY = (0.25, 0.7)
"""Opacity of a finding's colour at the level and at the map's maximum."""

SHADE = (0.55, 1.0)
"""Brightness of a finding's colour at the level and at the maximum (dark = weak evidence)."""

METHOD_LABELS = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "localiser": "localiser",
    "localizer": "localiser",
}
"""Names the legend uses for the method keys the CLI and the Explainer use."""

LEGEND_BACKGROUND = (0, 0, 0)
TEXT_COLOUR = (255, 255, 255)
MUTED_TEXT = (190, 190, 190)

# Vivid colours that stand out on a grey radiograph (none grey: max - min channel >= 100) and
# differ from each other (the 14 NIH findings at least 88 apart in RGB); keyed by canonical
# finding name, so a colour means the same finding in every picture.
PALETTE: dict[str, tuple[int, int, int]] = {
    "Atelectasis": (86, 180, 233),
    "Cardiomegaly": (230, 159, 0),
    "Effusion": (0, 200, 140),
    "Infiltration": (240, 228, 66),
    "Mass": (230, 60, 0),
    "Nodule": (255, 60, 150),
    "Pneumonia": (0, 90, 255),
    "Pneumothorax": (200, 0, 255),
    "Consolidation": (140, 255, 0),
    "Edema": (0, 255, 255),
    "Emphysema": (255, 150, 210),
    "Fibrosis": (130, 90, 200),
    "Pleural Thickening": (150, 255, 200),
    "Hernia": (180, 20, 60),
    "Enlarged Cardiomediastinum": (255, 190, 120),
    "Lung Opacity": (120, 230, 255),
    "Lung Lesion": (255, 90, 90),
    "Pleural Other": (160, 220, 120),
    "Fracture": (255, 255, 160),
    "Support Devices": (170, 170, 255),
    "Abnormal": (255, 80, 40),
}

_SPARE = (
    (255, 99, 71),
    (50, 205, 50),
    (255, 215, 0),
    (0, 191, 255),
    (218, 112, 214),
    (255, 140, 0),
    (127, 255, 212),
    (199, 21, 133),
)
"""Colours for names outside :data:`PALETTE`, chosen by a stable hash of the name."""


def finding_colour(finding: str) -> tuple[int, int, int]:
    """The finding's colour: fixed per canonical name (a stable hash for unknown names)."""
    name = canonical_label(finding)
    if name in PALETTE:
        return PALETTE[name]
    return _SPARE[zlib.crc32(name.lower().encode("utf-8")) % len(_SPARE)]


@dataclass
class OverlayItem:
    """One finding to draw: its probability, operating threshold, heatmap (H x W in [0, 1] at
    the image's size, or None for boxes only) and boxes (image pixels)."""

    finding: str
    probability: float
    threshold: float | None = None
    heatmap: np.ndarray | None = field(default=None, repr=False)
    boxes: Sequence[Box] = ()


@dataclass(frozen=True)
class LegendEntry:
    """A legend line as drawn: the finding, its colour and the text beside the colour scale."""

    finding: str
    colour: tuple[int, int, int]
    text: str


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled scalable font
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _grey(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {pixels.shape}")
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    return np.clip(np.nan_to_num(pixels.astype(np.float32)), 0.0, 1.0)


def _ramp(relative: np.ndarray, level: float) -> np.ndarray:
    """0 below ``level``, rising linearly to 1 at the maximum (relative heat in [0, 1])."""
    return np.clip((relative - level) / max(1e-6, 1.0 - level), 0.0, 1.0)


def _lay_on(rgb: np.ndarray, heat: np.ndarray, colour: tuple[int, int, int], level: float) -> np.ndarray:
    """``rgb`` with the finding's colour laid on where ``heat`` reaches ``level`` of its max."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return rgb
    relative = np.clip(heat / peak, 0.0, 1.0)
    shown = relative >= level
    if not shown.any():
        return rgb
    t = _ramp(relative[shown], level)[:, None]
    opacity = OPACITY[0] + (OPACITY[1] - OPACITY[0]) * t
    tint = np.asarray(colour, dtype=np.float32)[None, :] / 255.0 * (SHADE[0] + (SHADE[1] - SHADE[0]) * t)
    out = rgb.copy()
    out[shown] = rgb[shown] * (1.0 - opacity) + tint * opacity
    return out


def method_label(method: str) -> str:
    """How a method is named in a legend: ``gradcam`` -> "Grad-CAM" (others as given)."""
    return METHOD_LABELS.get(method.strip().lower(), method.strip()) if method else "heatmap"


def heat_layer_rgba(heat: np.ndarray, finding: str, level: float = HEAT_LEVEL) -> np.ndarray:
    """H x W x 4 uint8: the finding's colour with the opacity :func:`render_findings_overlay`
    uses, fully transparent below ``level`` of the map's maximum (for a page to lay over the
    radiograph); composited over the grey image it gives the same pixels as the overlay."""
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    out = np.zeros((*heat.shape, 4), dtype=np.uint8)
    peak = float(heat.max()) if heat.size else 0.0
    if peak <= 0:
        return out
    relative = np.clip(heat / peak, 0.0, 1.0)
    shown = relative >= level
    t = _ramp(relative[shown], level)[:, None]
    colour = np.asarray(finding_colour(finding), dtype=np.float32)[None, :]
    out[shown, :3] = np.rint(colour * (SHADE[0] + (SHADE[1] - SHADE[0]) * t)).astype(np.uint8)
    out[shown, 3] = np.rint(255.0 * (OPACITY[0] + (OPACITY[1] - OPACITY[0]) * t[:, 0])).astype(np.uint8)
    return out


def _probability_text(probability: float, threshold: float | None) -> str:
    if probability is None or not np.isfinite(probability):
        return ""
    if threshold is None:
        return f"p={probability:.2f}"
    relation = ">=" if probability >= threshold else "<"
    return f"p={probability:.2f} ({relation} threshold {threshold:.2f})"


def legend_entries(items: Sequence[OverlayItem]) -> list[LegendEntry]:
    """The legend's finding lines; a finding drawn twice keeps one line."""
    entries, seen = [], set()
    for item in items:
        key = canonical_label(item.finding)
        if key in seen:
            continue
        seen.add(key)
        text = f"{item.finding}  {_probability_text(item.probability, item.threshold)}".rstrip()
        entries.append(LegendEntry(item.finding, finding_colour(item.finding), text))
    return entries


def legend_title(items: Sequence[OverlayItem], method: str) -> list[str]:
    """The legend's heading lines: the method and what the colour scale means."""
    with_heat = [i.finding for i in items if i.heatmap is not None]
    lines = [method_label(method)]
    if with_heat:
        subject = with_heat[0] if len(with_heat) == 1 else "each finding"
        lines.append(f"relative evidence for {subject}, low -> high")
        lines.append(f"clear below {HEAT_LEVEL:.0%} of the map's maximum")
    if any(i.boxes for i in items):
        lines.append("boxes: where the finding is placed")
    return lines


@dataclass
class _Layout:
    size: int
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont
    small: ImageFont.ImageFont | ImageFont.FreeTypeFont
    pad: int
    line: int
    bar_width: int
    bar_height: int


def _layout(height: int, width: int) -> _Layout:
    size = max(11, min(height, width) // 40)
    small = max(10, round(size * 0.85))
    return _Layout(
        size=size,
        font=_font(size),
        small=_font(small),
        pad=max(4, size // 2),
        line=round(size * 1.35),
        bar_width=max(60, size * 9),
        bar_height=max(6, size * 3 // 4),
    )


def _text_width(font, text: str) -> int:
    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return int(right - left)


def _scale_bar(colour: tuple[int, int, int], width: int, height: int, level: float) -> Image.Image:
    """The colour scale as it looks over a mid-grey radiograph: clear up to ``level``, then the
    finding's colour, darker and fainter at weak evidence, full at the maximum."""
    relative = np.linspace(0.0, 1.0, width, dtype=np.float32)
    grey = np.full((width, 3), 0.45, dtype=np.float32)
    strip = _lay_on(grey, relative, colour, level)
    # a thin tick shows where the level is, so the clear part reads as part of the scale
    image = np.repeat(strip[None], height, axis=0)
    tick = min(width - 1, round(level * (width - 1)))
    image[:, tick] = 1.0
    return Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def _draw_box(draw: ImageDraw.ImageDraw, box: Box, colour, line: int) -> None:
    """The box in the finding's colour, with a thin black edge so it shows on bright bone."""
    x0, y0 = box.x, box.y
    x1, y1 = box.x + box.w - 1, box.y + box.h - 1
    draw.rectangle([x0 - line, y0 - line, x1 + line, y1 + line], outline=(0, 0, 0), width=1)
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_label(
    draw: ImageDraw.ImageDraw, box: Box, colour, label: str, font, line: int, size, placed: list
) -> None:
    """A small tag with the finding's name at the box: above it, else inside its top, moved
    down past tags already drawn so two findings' tags do not cover each other."""
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    tw, th = right - left + 4, bottom - top + 4
    width, height = size
    lx = min(max(0.0, box.x), max(0.0, width - tw))
    ly = box.y - th - line if box.y - th - line >= 0 else box.y + line
    for _ in range(8):
        rect = (lx, ly, lx + tw, ly + th)
        if not any(_overlaps(rect, other) for other in placed):
            break
        ly += th
    ly = min(max(0.0, ly), max(0.0, height - th))
    placed.append((lx, ly, lx + tw, ly + th))
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.rectangle([lx, ly, lx + tw - 1, ly + th - 1], fill=colour)
    draw.text(
        (lx + 2 - left, ly + 2 - top),
        label,
        font=font,
        fill=(0, 0, 0) if luminance > 140 else (255, 255, 255),
    )


def render_findings_overlay(
    pixels: np.ndarray,
    items: Sequence[OverlayItem],
    method: str,
    level: float = HEAT_LEVEL,
) -> Image.Image:
    """RGB picture: ``pixels`` (H x W, float [0, 1] or uint8) with each item's heat in its
    colour (clear below ``level`` of the map's maximum), its boxes, and the legend on the right.

    ``method`` names what made the maps/boxes ("Grad-CAM", "Grad-CAM++", "localiser"). The
    legend lines drawn are in ``image.info["legend"]`` (title lines, then one per finding).
    """
    if not 0.0 <= level < 1.0:
        raise ValueError(f"heat level must be in [0, 1), got {level}")
    grey = _grey(pixels)
    height, width = grey.shape
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for item in items:
        if item.heatmap is None:
            continue
        heat = np.asarray(item.heatmap)
        if heat.shape != grey.shape:
            raise ValueError(f"heatmap of {item.finding} has shape {heat.shape}, the image {grey.shape}")
        rgb = _lay_on(rgb, heat, finding_colour(item.finding), level)
    picture = Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), mode="RGB")

    layout = _layout(height, width)
    draw = ImageDraw.Draw(picture)
    line = max(1, min(height, width) // 200)
    drawn = [(item, box) for item in items for box in item.boxes if box.area > 0]
    for item, box in drawn:
        _draw_box(draw, box, finding_colour(item.finding), line)
    placed: list[tuple[float, float, float, float]] = []
    for item, box in drawn:  # tags after all outlines, so no outline crosses a tag
        colour = finding_colour(item.finding)
        _draw_label(draw, box, colour, item.finding, layout.small, line, picture.size, placed)

    title = legend_title(items, method)
    entries = legend_entries(items)
    has_heat = {canonical_label(i.finding) for i in items if i.heatmap is not None}
    text_width = max(
        [_text_width(layout.font, t) for t in title[:1]]
        + [_text_width(layout.small, t) for t in title[1:]]
        + [layout.size + layout.pad // 2 + _text_width(layout.font, e.text) for e in entries]
        + [layout.bar_width + 2 * _text_width(layout.small, "high") + 2 * layout.pad]
    )
    legend_width = text_width + 2 * layout.pad
    legend_height = layout.pad * 2 + layout.line * len(title) + layout.pad
    legend_height += len(entries) * (layout.line + layout.bar_height + layout.pad)
    canvas = Image.new("RGB", (width + legend_width, max(height, legend_height)), LEGEND_BACKGROUND)
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = width + layout.pad, layout.pad
    for i, text in enumerate(title):
        draw.text(
            (x, y),
            text,
            font=layout.font if i == 0 else layout.small,
            fill=TEXT_COLOUR if i == 0 else MUTED_TEXT,
        )
        y += layout.line
    y += layout.pad
    for entry in entries:
        draw.rectangle([x, y + 2, x + layout.size - 2, y + layout.size], fill=entry.colour)
        draw.text((x + layout.size + layout.pad // 2, y), entry.text, font=layout.font, fill=TEXT_COLOUR)
        y += layout.line
        if canonical_label(entry.finding) in has_heat:
            low_w = _text_width(layout.small, "low")
            draw.text((x, y - 2), "low", font=layout.small, fill=MUTED_TEXT)
            bar_x = x + low_w + layout.pad // 2
            canvas.paste(_scale_bar(entry.colour, layout.bar_width, layout.bar_height, level), (bar_x, y))
            draw.text(
                (bar_x + layout.bar_width + layout.pad // 2, y - 2),
                "high",
                font=layout.small,
                fill=MUTED_TEXT,
            )
        y += layout.bar_height + layout.pad
    canvas.info["legend"] = tuple(title) + tuple(e.text for e in entries)
    canvas.info["image_size"] = (width, height)
    return canvas


def render_overlay(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    box: Box | None = None,
    label: str = "",
    alpha: float | None = None,
    colour_map: str | None = None,
    *,
    finding: str | None = None,
    probability: float | None = None,
    threshold: float | None = None,
    method: str = "Grad-CAM",
) -> Image.Image:
    """One finding's overlay (the older call): ``heatmap`` (H x W, [0, 1]) and ``box`` over
    ``pixels``, with the legend. The finding and probability come from the keywords, or are
    read from ``label`` as written by :func:`overlay_label` ("Mass 0.87*"); ``alpha`` and
    ``colour_map`` are accepted for old callers and ignored (the colour is the finding's)."""
    del alpha, colour_map
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != np.asarray(pixels).shape:
        raise ValueError(f"heatmap shape {heat.shape} differs from image shape {np.asarray(pixels).shape}")
    if finding is None or probability is None:
        parsed = parse_overlay_label(label)
        finding = finding if finding is not None else (parsed[0] if parsed else (label or "finding"))
        probability = probability if probability is not None else (parsed[1] if parsed else float("nan"))
    item = OverlayItem(finding, float(probability), threshold, heat, [box] if box is not None else [])
    return render_findings_overlay(pixels, [item], method)


def overlay_label(finding: str, probability: float, threshold: float | None = None) -> str:
    """``"Mass 0.87"``; a ``*`` marks a probability at or above the operating threshold."""
    mark = "*" if threshold is not None and probability >= threshold else ""
    return f"{finding} {probability:.2f}{mark}"


def parse_overlay_label(label: str) -> tuple[str, float] | None:
    """(finding, probability) from an :func:`overlay_label` text, or None."""
    name, _, value = label.strip().rpartition(" ")
    try:
        return (name, float(value.rstrip("*"))) if name else None
    except ValueError:
        return None


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write the picture with its legend lines as PNG text (``Description``), for programs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    legend = image.info.get("legend")
    if legend:
        info.add_text("Description", "\n".join(legend))
    image.save(path, pnginfo=info)
    return path


def save_overlay(
    path: str | Path,
    pixels: np.ndarray,
    heatmap: np.ndarray,
    box: Box | None,
    label: str,
    *,
    method: str = "Grad-CAM",
) -> Path:
    return save_png(render_overlay(pixels, heatmap, box, label, method=method), path)


def save_findings_overlay(
    path: str | Path, pixels: np.ndarray, items: Sequence[OverlayItem], method: str
) -> Path:
    return save_png(render_findings_overlay(pixels, items, method), path)
