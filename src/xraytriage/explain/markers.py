"""Burned-in markers and border bands: the places a box must never go.

Radiographs carry text burned into the pixels ("AP PORTABLE", the "L"/"R" side letters, often
in a little frame, dates), and many have a uniform black or white band at the edge (collimator
shadow, scanner padding). A classifier's Grad-CAM heat often lands on them, because they are
the sharpest, most contrasted things in the picture. :func:`marker_mask` finds them so the box
search (:func:`xraytriage.explain.boxes.boxes_from_heatmap` with ``exclude=``) can ignore them.

How (measured on the NIH 256 px and 1024 px images and the shared DICOMs):

- **border band**: the outer rows/columns that are uniform (almost all pixels within a few
  grey levels of the row's median) — padding, a white label strip, a black frame — plus a thin
  fixed margin on every side, so no box touches the image border;
- **text and side markers**: small, bright, sharp-edged components near the periphery. Text
  strokes are one or two pixels wide and step from the background in one pixel, so a small
  white top-hat (the image minus its grey opening) picks them out, and the ratio of the
  steepest step to the contrast separates them from smooth anatomy (nodules, vessels, the
  edge of a rib), which rises over several pixels. Components that are large, smooth, or in
  the central chest are left alone, so a lesion is not masked.

The work happens on a copy at most :data:`WORK_SIZE` pixels on its longer side (the
parameters are in units of that copy's short side), and the mask is scaled back to the
input's size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from xraytriage.errors import ConfigError

_EIGHT = np.ones((3, 3), dtype=bool)

WORK_SIZE = 256
"""Longest side (pixels) the detector works at; larger images are reduced first."""

MIN_DETECT_SIZE = 128
"""Text and plates are looked for only when the short side has at least this many pixels: in a
thumbnail a side letter and a small nodule are the same few bright pixels."""

EDGE_MARGIN = 0.01
"""A band this fraction of the short side is always part of the mask (no box on the border)."""

MAX_BAND = 0.2
"""A uniform border band is searched at most this fraction of the side inward."""

BAND_TOLERANCE = 0.03
"""A row/column is uniform when nearly all its pixels lie within this of its median ([0, 1])."""

BAND_SHARE = 0.9
"""...where "nearly all" means this share of them."""

TOPHAT_SIZE = 0.025
"""Side of the top-hat's square structuring element, as a fraction of the short side."""

SEED_CONTRAST = 0.25
"""A marker component must reach this top-hat contrast somewhere ([0, 1] grey levels)."""

GROW_CONTRAST = 0.1
"""Pixels of a marker component: top-hat contrast at least this (hysteresis below the seed)."""

MIN_SHARPNESS = 0.45
"""Steepest one-pixel step inside a component / its peak contrast: text steps in a pixel."""

MAX_COMPONENT = 0.12
"""A marker component's box is at most this fraction of the short side across..."""

MAX_LENGTH = 0.4
"""...and at most this along (a line of text is long and low)."""

FLAT_RING = 0.1
"""Text sits on a flat background: the grey levels just around a component spread (std) at
most this share of its contrast (a vessel or a skin fold has a busy surrounding)..."""

STRONG_CONTRAST = 0.45
MAX_RING_SPREAD = 0.3
"""...or, for a strong marker (top-hat contrast >= STRONG_CONTRAST; anatomy rarely reaches
it at this scale), at most MAX_RING_SPREAD (a side letter over the shoulder)."""

PERIPHERY = 0.25
"""Markers are looked for within this fraction of the side from an edge (not the chest centre)."""

PLATE_SIZE = 0.07
"""Top-hat element for plates (framed letters, lead markers): bigger than a text stroke."""

PLATE_GROW = 0.15
PLATE_MIN_PIXELS = 12
PLATE_CONTRAST, PLATE_SHARP = 0.4, 0.5
STRONG_PLATE, STRONG_PLATE_SHARP = 0.6, 0.4
"""A plate stands PLATE_CONTRAST above its surroundings and its outline is sharp: the median
over the outline of the steepest one-pixel step next to it, over the contrast, is at least
PLATE_SHARP (STRONG_PLATE_SHARP for a plate STRONG_PLATE above its surroundings). Anatomy
rises over several pixels, or stands out less (measured on the NIH images)."""

GROW = 0.012
"""The mask is grown by this fraction of the short side, to cover anti-aliased stroke edges."""


def _as_unit_float(pixels: np.ndarray) -> np.ndarray:
    array = np.asarray(pixels)
    if array.ndim != 2:
        raise ConfigError(f"marker_mask expects a 2-D grayscale image, got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        top = float(array.max()) or 1.0
        return array.astype(np.float32) / top
    return np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0)


def _work_copy(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    scale = min(1.0, WORK_SIZE / max(height, width))
    if scale >= 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(gray, mode="F").resize(size, Image.Resampling.BOX))


def _uniform_lines(gray: np.ndarray) -> np.ndarray:
    """Per row: whether it is a uniform line (padding, label strip, frame)."""
    median = np.median(gray, axis=1, keepdims=True)
    return np.mean(np.abs(gray - median) <= BAND_TOLERANCE, axis=1) >= BAND_SHARE


def _band_depth(uniform: np.ndarray, limit: int, gap: int = 2) -> int:
    """How many lines from the start belong to a uniform band: up to the last uniform line
    before ``gap`` + 1 non-uniform lines in a row (a JPEG seam or a ruler tick does not end it)."""
    depth, misses = 0, 0
    for index in range(min(limit, uniform.size)):
        if uniform[index]:
            depth, misses = index + 1, 0
        else:
            misses += 1
            if misses > gap:
                break
    return depth


def border_mask(gray: np.ndarray) -> np.ndarray:
    """True in the fixed edge margin and in uniform bands reaching in from an edge."""
    height, width = gray.shape
    mask = np.zeros((height, width), dtype=bool)
    margin = max(1, round(EDGE_MARGIN * min(height, width)))
    mask[:margin] = mask[-margin:] = True
    mask[:, :margin] = mask[:, -margin:] = True
    rows, cols = _uniform_lines(gray), _uniform_lines(gray.T)
    top = _band_depth(rows, round(MAX_BAND * height))
    bottom = _band_depth(rows[::-1], round(MAX_BAND * height))
    left = _band_depth(cols, round(MAX_BAND * width))
    right = _band_depth(cols[::-1], round(MAX_BAND * width))
    mask[:top] = True
    mask[height - bottom :] = True
    mask[:, :left] = True
    mask[:, width - right :] = True
    return mask


def _steps(gray: np.ndarray) -> np.ndarray:
    """Largest one-pixel grey-level step at each pixel (up/down or left/right neighbour)."""
    down = np.abs(np.diff(gray, axis=0, prepend=gray[:1]))
    right = np.abs(np.diff(gray, axis=1, prepend=gray[:, :1]))
    return np.maximum(down, right)


def _tophat(gray: np.ndarray, fraction: float) -> np.ndarray:
    """White top-hat: what stands out above the background over less than ``fraction`` of the
    side. Outside the image counts as black, so a marker cut by the image edge still stands out."""
    size = max(3, round(fraction * min(gray.shape)) | 1)
    return gray - ndimage.grey_opening(gray, size=(size, size), mode="constant", cval=0.0)


def _peripheral(rows: slice, cols: slice, shape: tuple[int, int]) -> bool:
    height, width = shape
    cy, cx = (rows.start + rows.stop) / 2.0, (cols.start + cols.stop) / 2.0
    inner_y = PERIPHERY * height < cy < height - PERIPHERY * height
    inner_x = PERIPHERY * width < cx < width - PERIPHERY * width
    return not (inner_y and inner_x)


def _window(rows: slice, cols: slice, pad: int) -> tuple[slice, slice]:
    return slice(max(0, rows.start - pad), rows.stop + pad), slice(max(0, cols.start - pad), cols.stop + pad)


def _bright_components(gray: np.ndarray, size: int, grow: float):
    """Bright regions standing ``grow`` above their surroundings (white top-hat of ``size``):
    (grown mask, labelled components, their labels 1..n, each one's peak top-hat)."""
    tophat = _tophat(gray, size)
    grown = tophat >= grow
    labelled, count = ndimage.label(grown, structure=_EIGHT)
    index = np.arange(1, count + 1)
    peak = ndimage.maximum(tophat, labelled, index) if count else np.zeros(0)
    return grown, labelled, index, np.asarray(peak)


def text_mask(gray: np.ndarray) -> np.ndarray:
    """True on small, bright, sharp-edged components near the periphery (burned-in text)."""
    short = min(gray.shape)
    grown, labelled, index, peak = _bright_components(gray, TOPHAT_SIZE, GROW_CONTRAST)
    keep = np.zeros(len(index) + 1, dtype=bool)
    if len(index) == 0:
        return keep[labelled]
    steepest = ndimage.maximum(_steps(gray), labelled, index)
    for i, (rows, cols) in enumerate(ndimage.find_objects(labelled)):
        if peak[i] < SEED_CONTRAST or steepest[i] < MIN_SHARPNESS * peak[i]:
            continue
        if rows.stop - rows.start > MAX_COMPONENT * short or cols.stop - cols.start > MAX_LENGTH * short:
            continue  # text runs horizontally: low and at most a line long
        if not _peripheral(rows, cols, gray.shape):
            continue
        window = _window(rows, cols, 2)
        inside = labelled[window] == i + 1
        ring = ndimage.binary_dilation(inside, iterations=2) & ~grown[window]
        spread = float(np.std(gray[window][ring])) / peak[i] if ring.any() else np.inf
        if spread > FLAT_RING and (peak[i] < STRONG_CONTRAST or spread > MAX_RING_SPREAD):
            continue
        keep[i + 1] = True
    return keep[labelled]


def plate_mask(gray: np.ndarray) -> np.ndarray:
    """True on bright plates near the periphery: framed side letters, lead markers, label
    rectangles -- flat, a few times wider than a text stroke, with a one-pixel edge all round."""
    short = min(gray.shape)
    _, labelled, index, peak = _bright_components(gray, PLATE_SIZE, PLATE_GROW)
    keep = np.zeros(len(index) + 1, dtype=bool)
    if len(index) == 0:
        return keep[labelled]
    pixels = ndimage.sum_labels(np.ones_like(gray), labelled, index)
    steps = ndimage.maximum_filter(_steps(gray), size=3)  # the step next to each outline pixel
    inner = np.zeros(gray.shape, dtype=bool)  # the image's own edge is no edge of a plate
    inner[1:-1, 1:-1] = True
    for i, (rows, cols) in enumerate(ndimage.find_objects(labelled)):
        if peak[i] < PLATE_CONTRAST or pixels[i] < PLATE_MIN_PIXELS:
            continue
        if max(rows.stop - rows.start, cols.stop - cols.start) > MAX_COMPONENT * short:
            continue
        if not _peripheral(rows, cols, gray.shape):
            continue
        window = _window(rows, cols, 1)
        inside = labelled[window] == i + 1
        edge = inside & ~ndimage.binary_erosion(inside) & inner[window]
        if not edge.any():
            continue
        sharpness = float(np.median(steps[window][edge])) / peak[i]
        if sharpness >= (STRONG_PLATE_SHARP if peak[i] >= STRONG_PLATE else PLATE_SHARP):
            keep[i + 1] = True
    return keep[labelled]


def marker_mask(pixels: np.ndarray) -> np.ndarray:
    """Bool H x W: True on burned-in markers (text, side letters) and the border band.

    ``pixels``: the radiograph as displayed (float in [0, 1] or uint8, H x W), e.g.
    ``Radiograph.pixels``. The mask is grown a little so anti-aliased stroke edges are covered.
    """
    gray = _as_unit_float(pixels)
    height, width = gray.shape
    if height < 8 or width < 8:
        return np.zeros((height, width), dtype=bool)
    work = _work_copy(gray)
    mask = border_mask(work)
    if min(work.shape) >= MIN_DETECT_SIZE:
        mask |= grow_mask(text_mask(work) | plate_mask(work))
    if mask.shape != (height, width):
        resized = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(
            (width, height), Image.Resampling.NEAREST
        )
        mask = np.asarray(resized) > 0
    return mask


def grow_mask(mask: np.ndarray, fraction: float = GROW) -> np.ndarray:
    """``mask`` dilated by ``fraction`` of its short side (at least one pixel)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    steps = max(1, round(fraction * min(mask.shape)))
    return ndimage.maximum_filter(mask.astype(np.uint8), size=2 * steps + 1) > 0


def check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``mask`` as a bool array, or a clear error when it does not fit a map of ``shape``."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ConfigError(f"marker mask shape {mask.shape} differs from heatmap shape {tuple(shape)}")
    return mask.astype(bool, copy=False)


def suppress_markers(heatmap: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``heatmap`` with zero heat inside ``mask`` grown a little and on the hills topped there
    (:func:`marker_hill`): the heat the box search uses (a copy; None = unchanged), e.g. for a
    pointing-game check that should not count a hit on a side letter."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if mask is None:
        return heat
    grown = grow_mask(check_mask(mask, heat.shape))
    return np.where(grown | marker_hill(heat, grown), np.float32(0.0), heat)


HILL_GRID = 128
""":func:`marker_hill` works on the heat reduced to at most this many cells a side (CAM heat is
smooth: a few cells per network stride), so it costs milliseconds at any image size."""


HILL_LEVELS = 32
"""Heat levels :func:`marker_hill` tells apart (the saddle between hills is found to 1/32)."""


def _reduce(array: np.ndarray, factor: int, how: str) -> np.ndarray:
    height, width = array.shape
    pad = ((0, -height % factor), (0, -width % factor))
    padded = np.pad(array, pad, mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.max(axis=(1, 3)) if how == "max" else blocks.mean(axis=(1, 3))


def marker_hill(heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bool H x W: heat that belongs to a hill whose top is on ``mask`` -- pixels joined to the
    mask by a path that never drops below their own heat (grey reconstruction by dilation).
    Grad-CAM is coarse: heat on a side letter spreads far beyond the letter, and this is that
    spread. A separate lesion has a valley between it and the marker, so its top (above the
    saddle) stays out."""
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32))
    mask = check_mask(mask, heat.shape)
    height, width = heat.shape
    if not mask.any() or not float(heat.max()) > 0:
        return np.zeros((height, width), dtype=bool)
    factor = max(1, -(-max(height, width) // HILL_GRID))
    small = _reduce(heat, factor, "mean") if factor > 1 else heat
    on_mask = _reduce(mask, factor, "max") if factor > 1 else mask
    # reconstruction by levels: a pixel is on the hill when its component at its own level
    # (quantised to HILL_LEVELS steps of the maximum) touches the mask
    peak = float(small.max())
    step = np.minimum((small / peak * HILL_LEVELS).astype(np.int32), HILL_LEVELS - 1)
    hill = np.zeros(small.shape, dtype=bool)
    for k in range(HILL_LEVELS):
        above = (step >= k) & (small > 0)
        labelled, _ = ndimage.label(above, structure=_EIGHT)
        touching = np.unique(labelled[on_mask & above])
        if touching.size == 0:
            break  # higher levels are inside these components: nothing touches the mask there
        hill |= (step == k) & np.isin(labelled, touching[touching > 0])
    if factor > 1:
        hill = np.repeat(np.repeat(hill, factor, axis=0), factor, axis=1)[:height, :width]
    return hill
