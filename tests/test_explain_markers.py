"""Burned-in markers never become boxes: text, side letters and border bands are found
(``marker_mask``) and ``boxes_from_heatmap(..., exclude=)`` keeps boxes off them, while heat on
a lesion elsewhere still gets its box. Synthetic chests with text drawn by PIL, real NIH images
with real markers and the real DICOMs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from tool_support import skip_missing
from xraytriage.data.synthetic import make_sample
from xraytriage.errors import ConfigError
from xraytriage.explain.boxes import Box, SizePrior, best_box, boxes_from_heatmap
from xraytriage.explain.markers import marker_mask, suppress_markers

SIZE = 256


def _gaussian(shape, cy, cx, sigma) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))


def _overlap(box: Box, rows: slice, cols: slice) -> float:
    """Share of ``box`` that lies on the region (rows, cols)."""
    iw = min(box.x + box.w, cols.stop) - max(box.x, cols.start)
    ih = min(box.y + box.h, rows.stop) - max(box.y, rows.start)
    return max(0.0, iw) * max(0.0, ih) / box.area


def _iou(box: Box, other: tuple[float, float, float, float]) -> float:
    x, y, w, h = other
    iw = min(box.x + box.w, x + w) - max(box.x, x)
    ih = min(box.y + box.h, y + h) - max(box.y, y)
    inter = max(0.0, iw) * max(0.0, ih)
    return inter / (box.area + w * h - inter)


@pytest.fixture(scope="module")
def marked_chest():
    """A synthetic chest with a planted Mass, "AP PORTABLE" burned in at the top left, a framed
    "L" at the top right and a white label strip along the bottom edge."""
    sample = make_sample(np.random.default_rng(3), size=SIZE, classes=("Mass",), prevalence=1.0)
    image = Image.fromarray(sample.pixels)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=11)
    draw.text((8, 10), "AP PORTABLE", fill=255, font=font)
    draw.rectangle([222, 8, 240, 30], outline=255, width=2)
    draw.text((227, 12), "L", fill=255, font=font)
    pixels = np.asarray(image).copy()
    pixels[-10:] = 250  # a label strip / detector edge
    text = (slice(8, 26), slice(6, 90))
    side = (slice(6, 33), slice(220, 243))
    ((_, *planted),) = sample.boxes
    return pixels, text, side, tuple(planted)


def test_mask_covers_text_side_letter_and_band_but_not_the_lesion(marked_chest):
    pixels, text, side, (x, y, w, h) = marked_chest
    mask = marker_mask(pixels)
    assert mask.shape == pixels.shape and mask.dtype == bool
    strokes = pixels[text] >= 200
    assert mask[text][strokes].mean() > 0.95  # the letters
    assert mask[side][pixels[side] >= 200].mean() > 0.95  # the framed side letter
    assert mask[-10:].all()  # the white strip
    lesion = mask[int(y) : int(y + h), int(x) : int(x + w)]
    assert lesion.mean() < 0.02
    assert mask.mean() < 0.2
    # the same picture as float [0, 1] gives the same mask
    np.testing.assert_array_equal(marker_mask(pixels.astype(np.float32) / 255.0), mask)


def test_heat_on_burned_in_text_gives_no_box(marked_chest):
    pixels, text, side, _ = marked_chest
    mask = marker_mask(pixels)
    for rows, cols in (text, side):
        heat = _gaussian(pixels.shape, (rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2, 12)
        before = best_box(heat)
        assert before is not None and _overlap(before, rows, cols) > 0.5  # what used to happen
        assert all(_overlap(b, rows, cols) < 0.2 for b in boxes_from_heatmap(heat, exclude=mask))
        assert best_box(heat, exclude=mask) is None


def test_heat_on_the_border_band_gives_no_box(marked_chest):
    pixels, *_ = marked_chest
    mask = marker_mask(pixels)
    heat = _gaussian(pixels.shape, SIZE - 5, SIZE / 2, 14)
    assert best_box(heat) is not None
    boxes = boxes_from_heatmap(heat, exclude=mask)
    assert all(b.y + b.h <= SIZE - 10 for b in boxes)


def test_lesion_heat_keeps_its_box_next_to_hotter_text(marked_chest):
    pixels, text, _, planted = marked_chest
    x, y, w, h = planted
    mask = marker_mask(pixels)
    on_text = _gaussian(pixels.shape, 17, 48, 12)
    lesion = 0.7 * _gaussian(pixels.shape, y + h / 2, x + w / 2, w / 3)
    heat = np.maximum(on_text, lesion)
    assert _overlap(best_box(heat), *text) > 0.5  # without the mask the text wins
    box = best_box(heat, exclude=mask)
    assert box is not None and _iou(box, planted) > 0.5
    # with the size prior too (several thresholds), and every box stays off the text
    boxes = boxes_from_heatmap(heat, prior=SizePrior(w / SIZE, h / SIZE), max_boxes=3, exclude=mask)
    assert _iou(boxes[0], planted) > 0.5 and all(_overlap(b, *text) < 0.2 for b in boxes)


def test_boxes_never_touch_the_image_border_with_a_mask():
    heat = _gaussian((120, 160), 60, 2, 20)  # a blob cut by the left edge
    assert best_box(heat).x == 0
    box = best_box(heat, exclude=np.zeros((120, 160), dtype=bool))
    assert box is not None and box.x >= 1 and box.y >= 1
    assert box.x + box.w <= 159 and box.y + box.h <= 119


def test_exclude_is_optional_and_checked():
    heat = _gaussian((64, 64), 32, 32, 6)
    assert boxes_from_heatmap(heat) == boxes_from_heatmap(heat, exclude=None)
    with pytest.raises(ConfigError, match="marker mask shape"):
        boxes_from_heatmap(heat, exclude=np.zeros((10, 10), dtype=bool))
    with pytest.raises(ConfigError, match="2-D"):
        marker_mask(np.zeros((8, 8, 3), dtype=np.uint8))
    heat = np.maximum(heat, 0.6 * _gaussian((64, 64), 10, 52, 4))  # a second, separate blob
    suppressed = suppress_markers(heat, np.pad(np.ones((4, 4), bool), ((30, 30), (30, 30))))
    assert suppressed[32, 32] == 0 and suppressed[32, 40] == 0  # the marker and its flank
    assert suppressed[10, 52] == heat[10, 52] > 0.5  # the other blob's top stays


# --- real images ----------------------------------------------------------------------


def _nih(shared_data, name: str) -> np.ndarray:
    path = shared_data / "nih" / "images" / name
    if not path.is_file():
        skip_missing(f"{path} not in the shared data")
    return np.asarray(Image.open(path).convert("L"))


def test_real_nih_text_is_masked_and_the_mass_keeps_its_box(shared_data):
    """00001787_008: "AP SUPINE PORTABLE" burned in at the top left, a Mass box from NIH."""
    pixels = _nih(shared_data, "00001787_008.png")
    mask = marker_mask(pixels)
    text = (slice(12, 51), slice(14, 57))
    assert mask[text][pixels[text] >= 128].mean() > 0.9
    boxes = pd.read_csv(shared_data / "nih/meta/BBox_List_2017.csv.gz").iloc[:, :6]
    boxes.columns = ["image", "finding", "x", "y", "w", "h"]
    (row,) = boxes[boxes.image == "00001787_008.png"].itertuples()
    scale = pixels.shape[1] / 1024
    truth = (row.x * scale, row.y * scale, row.w * scale, row.h * scale)
    x, y, w, h = truth
    assert mask[int(y) : int(y + h), int(x) : int(x + w)].mean() < 0.02
    lesion = np.zeros(pixels.shape, dtype=np.float32)
    lesion[int(y) : int(y + h), int(x) : int(x + w)] = 0.45  # weaker than the text's heat
    heat = np.maximum(_gaussian(pixels.shape, 30, 36, 20), ndimage.gaussian_filter(lesion, 3))
    assert _overlap(best_box(heat), *text) > 0.3  # without the mask: only the text is boxed
    box = best_box(heat, exclude=mask)
    assert box is not None and _iou(box, truth) > 0.4 and _overlap(box, *text) == 0


@pytest.mark.slow
def test_real_nih_lesion_boxes_are_not_masked(shared_data):
    """Over every NIH box on the images here, the mask covers almost none of the lesion."""
    boxes = pd.read_csv(shared_data / "nih/meta/BBox_List_2017.csv.gz").iloc[:, :6]
    boxes.columns = ["image", "finding", "x", "y", "w", "h"]
    folder = shared_data / "nih" / "images"
    boxes = boxes[[(folder / name).is_file() for name in boxes.image]]
    assert len(boxes) > 0
    boxes = boxes[boxes.image.isin(sorted(set(boxes.image))[::3])]  # a third of the images: seconds
    covered, masks = [], {}
    for row in boxes.itertuples():
        if row.image not in masks:
            masks[row.image] = marker_mask(np.asarray(Image.open(folder / row.image).convert("L")))
        mask = masks[row.image]
        s = mask.shape[1] / 1024
        y0, x0 = int(row.y * s), int(row.x * s)
        covered.append(
            mask[y0 : int(np.ceil((row.y + row.h) * s)), x0 : int(np.ceil((row.x + row.w) * s))].mean()
        )
    covered = np.asarray(covered)
    assert covered.mean() < 0.01 and covered.max() < 0.25
    # ...while the masks do find markers: many of these images carry a side letter or text
    with_markers = sum(m[8:-8, 8:-8].any() for m in masks.values())
    assert with_markers > len(masks) / 4


def test_real_dicom_side_marker_is_masked(shared_data):
    """The RSNA CR 00322d4d carries an "L" with "MM" under it at the top right."""
    from xraytriage.io import read_radiograph

    path = shared_data / "dicom" / "rsna" / "00322d4d-1c29-4943-afc9-b6754be640eb.dcm"
    if not path.is_file():
        skip_missing(f"{path} not in the shared data")
    pixels = read_radiograph(path).pixels
    mask = marker_mask(pixels)
    assert mask.shape == pixels.shape
    marker = (slice(96, 152), slice(940, 1000))
    assert mask[marker][pixels[marker] >= 0.8].mean() > 0.9
    assert mask.mean() < 0.1
    heat = _gaussian(pixels.shape, 124, 970, 60)
    assert best_box(heat, exclude=mask) is None


def test_explainer_keeps_boxes_off_markers(tiny_checkpoint, marked_chest):
    from xraytriage.explain import Explainer, explain_image

    pixels, text, side, _ = marked_chest
    explainer = Explainer(tiny_checkpoint)
    explanations = explain_image(explainer, pixels, "all")
    assert explanations
    for e in explanations:
        assert e.markers is not None and e.markers.shape == pixels.shape and e.markers[text].any()
        if e.box is not None:
            assert _overlap(e.box, *text) < 0.2 and _overlap(e.box, *side) < 0.2
    off = Explainer(tiny_checkpoint, suppress_markers=False)
    assert all(e.markers is None for e in explain_image(off, pixels, "all"))
