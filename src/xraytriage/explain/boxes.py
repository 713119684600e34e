"""Bounding boxes from a heatmap: threshold, connected components, score; optional size prior.

Plain mode: keep the pixels at or above ``threshold`` x (map maximum), split them into
8-connected components (``scipy.ndimage.label``) and box each one. A box's ``score`` is the
share of the map's total heat that its component holds (0..1): a box around the main blob
scores high, a speck scores near zero.

Size prior (the seed team's idea): a finding has a typical size (a nodule is small,
cardiomegaly large). Components are collected at several thresholds, so the same blob is offered
tight and loose, and each score is multiplied by a log-normal weight that is 1 at the finding's
median box size and falls off with the ratio to it. Priors are learned from the NIH box list
(``learn_size_priors``) and stored as sizes *relative* to the image (width/1024, height/1024),
so they apply at any resolution. The learned priors ship in
``xraytriage/assets/explain/nih_box_size_priors.json``.

Markers (``exclude=``, e.g. :func:`xraytriage.explain.markers.marker_mask`): burned-in text,
side letters and border bands draw Grad-CAM heat but are never a finding. Their heat is set to
zero (the mask grown a little) before components are found, and so is the heat on the
flanks of a hill whose top is on the mask (:func:`~xraytriage.explain.markers.marker_hill`:
Grad-CAM is coarse, heat on a side letter spreads far beyond it); a component whose heat
still rises into the mask is left out; a box that still lies mostly on the mask is dropped,
and one that reaches the image border is pulled in from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from xraytriage.errors import ConfigError
from xraytriage.explain.markers import check_mask as _check_mask
from xraytriage.explain.markers import grow_mask, marker_hill
from xraytriage.labels import canonical_label

PRIORS_PATH = Path(__file__).resolve().parent.parent / "assets" / "explain" / "nih_box_size_priors.json"
PRIOR_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Box:
    """A box in pixels of the image it was found on: (x, y) top-left corner, w x h."""

    x: float
    y: float
    w: float
    h: float
    score: float = 1.0

    @property
    def area(self) -> float:
        return max(0.0, self.w) * max(0.0, self.h)

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x * sx, self.y * sy, self.w * sx, self.h * sy, self.score)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SizePrior:
    """Typical relative box size of one finding: median width/height fractions and log spread."""

    width: float
    height: float
    sigma: float = 0.5
    count: int = 0

    def weight(self, rel_width: float, rel_height: float) -> float:
        """1 at the median size, exp(-d^2 / 2 sigma^2) with d the summed log-ratio distance."""
        if rel_width <= 0 or rel_height <= 0:
            return 0.0
        d2 = math.log(rel_width / self.width) ** 2 + math.log(rel_height / self.height) ** 2
        return math.exp(-d2 / (2.0 * self.sigma**2))


def learn_size_priors(
    boxes, reference_width: float = 1024, reference_height: float = 1024
) -> dict[str, SizePrior]:
    """Median relative size per finding from a box table (``finding, w, h``; NIH 1024 px space).

    ``sigma`` is the pooled standard deviation of log width and log height (at least 0.25, so a
    finding with few boxes does not get a needle-sharp prior).
    """
    priors: dict[str, SizePrior] = {}
    for finding, group in boxes.groupby("finding"):
        rel_w = group["w"].to_numpy(float) / reference_width
        rel_h = group["h"].to_numpy(float) / reference_height
        keep = (rel_w > 0) & (rel_h > 0)
        if not keep.any():
            continue
        logs = np.concatenate(
            [
                np.log(rel_w[keep]) - np.log(np.median(rel_w[keep])),
                np.log(rel_h[keep]) - np.log(np.median(rel_h[keep])),
            ]
        )
        priors[canonical_label(str(finding))] = SizePrior(
            width=round(float(np.median(rel_w[keep])), 5),
            height=round(float(np.median(rel_h[keep])), 5),
            sigma=round(max(0.25, float(np.sqrt(np.mean(logs**2)))), 4),
            count=int(keep.sum()),
        )
    return priors


def save_size_priors(priors: Mapping[str, SizePrior], path: str | Path, source: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "description": "median box width/height as a fraction of the image, per finding; sigma = log spread",
        "source": source,
        "findings": {name: asdict(prior) for name, prior in sorted(priors.items())},
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def load_size_priors(path: str | Path | None = None) -> dict[str, SizePrior]:
    """The priors shipped with the package (or from ``path``)."""
    path = Path(path) if path is not None else PRIORS_PATH
    try:
        data = json.loads(path.read_text())
        return {name: SizePrior(**values) for name, values in data["findings"].items()}
    except FileNotFoundError:
        raise ConfigError(f"{path}: size-prior file not found") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a size-prior file ({exc})") from None


def _components(
    heatmap: np.ndarray,
    level: float,
    min_pixels: int,
    original: np.ndarray | None = None,
    grown: np.ndarray | None = None,
) -> list[tuple[slice, slice, float]]:
    """(rows, cols, heat mass) of each component at or above ``level``. With a marker mask
    (``grown``, and ``original`` = the map before the mask's heat was zeroed): a component
    whose heat keeps rising into the mask is the slope of a hill whose top is a marker, not
    a finding of its own, and is left out."""
    labelled, count = ndimage.label(heatmap >= level, structure=_EIGHT_CONNECTED)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    masses = ndimage.sum_labels(heatmap, labelled, index)
    sizes = ndimage.sum_labels(np.ones_like(heatmap), labelled, index)
    slope = np.zeros(count, dtype=bool)
    if grown is not None and original is not None:
        tops = ndimage.maximum(heatmap, labelled, index)
        touching = np.where(grown, ndimage.grey_dilation(labelled, size=(3, 3)), 0)
        slope = ndimage.maximum(original, touching, index) >= tops
    out = []
    for (rows, cols), mass, size, on_slope in zip(
        ndimage.find_objects(labelled), masses, sizes, slope, strict=True
    ):
        if size >= min_pixels and not on_slope:
            out.append((rows, cols, float(mass)))
    return out


def _overlap_of_smaller(a: Box, b: Box) -> float:
    iw = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    ih = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / max(1e-9, min(a.area, b.area))


MAX_MARKER_SHARE = 0.5
"""A box with more than this share of its area on the (grown) marker mask is dropped."""

BORDER_MARGIN = 0.01
"""A box keeps at least this fraction of the short side away from the image border."""


def _clear_of_markers(box: Box, grown: np.ndarray, min_pixels: int) -> Box | None:
    """``box`` pulled in from the image border and checked against the marker mask; None
    when too little of it is left or it lies mostly on markers."""
    height, width = grown.shape
    margin = max(1, round(BORDER_MARGIN * min(height, width)))
    x0, y0 = max(box.x, margin), max(box.y, margin)
    x1, y1 = min(box.x + box.w, width - margin), min(box.y + box.h, height - margin)
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < min_pixels:
        return None
    inside = grown[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
    if inside.size == 0 or float(inside.mean()) > MAX_MARKER_SHARE:
        return None
    return Box(x0, y0, x1 - x0, y1 - y0, box.score)


def boxes_from_heatmap(
    heatmap: np.ndarray,
    threshold: float = 0.5,
    prior: SizePrior | None = None,
    max_boxes: int | None = None,
    min_area_fraction: float = 0.0005,
    thresholds: Sequence[float] = PRIOR_THRESHOLDS,
    overlap: float = 0.5,
    exclude: np.ndarray | None = None,
) -> list[Box]:
    """Boxes around the hot regions of ``heatmap`` (H x W, >= 0), best first.

    Without ``prior``: one threshold, one box per component. With ``prior``: candidates from all
    ``thresholds``, score x prior weight, then greedy suppression of boxes that overlap a better
    one by more than ``overlap`` (of the smaller box), so each blob is boxed once.
    Components smaller than ``min_area_fraction`` of the image are ignored. An all-zero map
    gives no boxes. ``exclude`` (bool H x W, True on markers and border bands): no box there
    (see the module docstring); scores are then shares of the heat outside the mask.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ConfigError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    grown, original = None, heatmap
    if exclude is not None:
        grown = grow_mask(_check_mask(exclude, heatmap.shape))
        heatmap = np.where(grown | marker_hill(heatmap, grown), np.float32(0.0), heatmap)
    peak = float(heatmap.max()) if heatmap.size else 0.0
    total = float(heatmap[heatmap > 0].sum()) if heatmap.size else 0.0
    if peak <= 0 or total <= 0:
        return []
    height, width = heatmap.shape
    min_pixels = max(1, round(min_area_fraction * height * width))
    levels = thresholds if prior is not None else (threshold,)
    candidates: list[Box] = []
    for level in levels:
        for rows, cols, mass in _components(heatmap, level * peak, min_pixels, original, grown):
            box = Box(
                float(cols.start),
                float(rows.start),
                float(cols.stop - cols.start),
                float(rows.stop - rows.start),
            )
            if grown is not None:
                box = _clear_of_markers(box, grown, min_pixels)
                if box is None:
                    continue
            score = mass / total
            if prior is not None:
                score *= prior.weight(box.w / width, box.h / height)
            candidates.append(Box(box.x, box.y, box.w, box.h, round(score, 6)))
    candidates.sort(key=lambda b: b.score, reverse=True)
    kept: list[Box] = []
    for box in candidates:
        if prior is not None and any(_overlap_of_smaller(box, k) > overlap for k in kept):
            continue
        kept.append(box)
        if max_boxes is not None and len(kept) >= max_boxes:
            break
    return kept


def best_box(
    heatmap: np.ndarray,
    threshold: float = 0.5,
    prior: SizePrior | None = None,
    exclude: np.ndarray | None = None,
) -> Box | None:
    """The highest-scoring box of ``heatmap`` (None for an all-zero map, or when all its heat
    lies on the ``exclude`` mask)."""
    boxes = boxes_from_heatmap(heatmap, threshold=threshold, prior=prior, max_boxes=1, exclude=exclude)
    return boxes[0] if boxes else None


def prior_for(finding: str, priors: Mapping[str, SizePrior] | None) -> SizePrior | None:
    """The prior of ``finding`` (by canonical name), or None when there is none."""
    if not priors:
        return None
    return priors.get(canonical_label(finding))


def priors_summary(priors: Mapping[str, SizePrior]) -> list[dict[str, Any]]:
    return [{"finding": name, **asdict(prior)} for name, prior in sorted(priors.items())]
