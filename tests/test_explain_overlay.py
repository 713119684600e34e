"""Overlays people can read: clear below the heat level (those pixels are the radiograph
exactly), a legend with the method and the colour scale's meaning, one fixed colour per
finding, boxes in the finding's colour; the web layer and picture use the same colours."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from xraytriage.explain.boxes import Box
from xraytriage.explain.overlay import (
    HEAT_LEVEL,
    PALETTE,
    OverlayItem,
    finding_colour,
    heat_layer_rgba,
    legend_entries,
    method_label,
    render_findings_overlay,
    render_overlay,
    save_findings_overlay,
)
from xraytriage.labels import NIH_FINDINGS

H, W = 160, 200


def _radiograph() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    return np.clip(60 + 0.5 * xx + 0.3 * yy + rng.normal(0, 6, (H, W)), 0, 255).astype(np.uint8)


def _blob(cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))


def _hue_direction(rgb: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """The colour a pixel was pushed towards, as a unit vector (overlay minus grey image)."""
    delta = rgb.astype(np.float32) - grey.astype(np.float32)[..., None]
    return delta / np.linalg.norm(delta)


def test_heat_below_the_level_shows_the_radiograph_exactly():
    pixels = _radiograph()
    heat = _blob(80, 100, 25)
    image = np.asarray(render_findings_overlay(pixels, [OverlayItem("Mass", 0.8, 0.5, heat)], "Grad-CAM"))
    picture = image[:H, :W]
    clear = heat / heat.max() < HEAT_LEVEL
    assert clear.any() and (~clear).any()
    for channel in range(3):
        np.testing.assert_array_equal(picture[..., channel][clear], pixels[clear])
    # above the level the finding's colour is laid on, strongest at the top of the map
    hot = heat / heat.max() >= 0.9
    assert (picture[hot] != pixels[hot][:, None]).any(axis=1).all()
    # float input in [0, 1] gives the same picture
    again = np.asarray(
        render_findings_overlay(pixels / 255.0, [OverlayItem("Mass", 0.8, 0.5, heat)], "Grad-CAM")
    )
    np.testing.assert_array_equal(again, image)


def test_legend_names_method_scale_finding_probability_and_threshold(tmp_path):
    pixels = _radiograph()
    item = OverlayItem("Mass", 0.87, 0.4, _blob(80, 100, 20), [Box(80, 60, 40, 40)])
    image = render_findings_overlay(pixels, [item], "Grad-CAM")
    assert image.size[0] > W and image.size[1] >= H and image.mode == "RGB"
    legend = image.info["legend"]
    assert legend[0] == "Grad-CAM"
    assert "relative evidence for Mass, low -> high" in legend
    assert "Mass  p=0.87 (>= threshold 0.40)" in legend
    # the legend strip really carries drawn text and the finding's colour swatch
    strip = np.asarray(image)[:, W:]
    assert (strip.max(axis=2) > 200).sum() > 200  # white text pixels
    assert (strip == finding_colour("Mass")).all(axis=2).sum() >= 20  # the swatch
    # the method name follows what made the map
    assert render_findings_overlay(pixels, [item], "localiser").info["legend"][0] == "localiser"
    assert method_label("gradcam++") == "Grad-CAM++" and method_label("gradcam") == "Grad-CAM"
    # saved pictures keep the legend as PNG text for programs
    path = save_findings_overlay(tmp_path / "o.png", pixels, [item], "Grad-CAM")
    with Image.open(path) as saved:
        assert saved.text["Description"].splitlines() == list(legend)


def test_two_findings_get_their_own_colours_and_legend_lines():
    pixels = _radiograph()
    mass = OverlayItem("Mass", 0.9, 0.5, _blob(50, 50, 12), [Box(35, 35, 30, 30)])
    effusion = OverlayItem("Effusion", 0.6, 0.3, _blob(110, 150, 12), [Box(135, 95, 30, 30)])
    image = render_findings_overlay(pixels, [mass, effusion], "Grad-CAM")
    picture = np.asarray(image)[:H, :W]
    assert finding_colour("Mass") != finding_colour("Effusion")
    # each blob is tinted towards its own finding's colour
    for item, (cy, cx) in ((mass, (50, 50)), (effusion, (110, 150))):
        pushed = _hue_direction(picture[cy, cx], pixels[cy, cx])
        colour = np.asarray(finding_colour(item.finding), dtype=np.float32)
        grey = pixels[cy, cx] * np.ones(3, dtype=np.float32)
        wanted = (colour - grey) / np.linalg.norm(colour - grey)
        assert float(pushed @ wanted) > 0.9
    # boxes are outlined in the finding's colour
    assert tuple(picture[50, 35]) == finding_colour("Mass")
    assert tuple(picture[110, 135]) == finding_colour("Effusion")
    entries = legend_entries([mass, effusion])
    assert [e.finding for e in entries] == ["Mass", "Effusion"]
    assert [e.colour for e in entries] == [finding_colour("Mass"), finding_colour("Effusion")]
    assert "relative evidence for each finding, low -> high" in image.info["legend"]
    strip = np.asarray(image)[:, W:]
    for entry in entries:
        assert (strip == entry.colour).all(axis=2).sum() >= 20


def test_colours_are_fixed_per_finding_and_distinct():
    colours = [finding_colour(name) for name in NIH_FINDINGS]
    assert (
        min(np.linalg.norm(np.subtract(a, b)) for i, a in enumerate(colours) for b in colours[i + 1 :]) > 80
    )
    assert (
        finding_colour("Pleural_Thickening")
        == finding_colour("Pleural Thickening")
        == PALETTE["Pleural Thickening"]
    )
    assert finding_colour("Infiltrate") == finding_colour("Infiltration")
    assert finding_colour("Some New Finding") == finding_colour("Some New Finding")
    # no colour is grey: it must stand out on a radiograph
    assert all(max(c) - min(c) >= 100 for c in colours)


def test_boxes_only_item_and_old_render_overlay_call():
    pixels = _radiograph()
    boxes_only = render_findings_overlay(
        pixels, [OverlayItem("Nodule", 0.7, 0.5, None, [Box(20, 20, 30, 30)])], "localiser"
    )
    np.testing.assert_array_equal(np.asarray(boxes_only)[100:, 100:W, 0], pixels[100:, 100:])
    assert tuple(np.asarray(boxes_only)[20, 30]) == finding_colour("Nodule")
    # the older single-finding call still works and now carries the legend
    old = render_overlay(pixels, _blob(80, 100, 20), Box(80, 60, 40, 40), "Mass 0.87*")
    assert old.size[0] > W and "Mass  p=0.87" in old.info["legend"]
    with pytest.raises(ValueError, match="differs from image shape"):
        render_overlay(pixels, np.zeros((10, 10)))


def test_web_layer_matches_the_overlay_colours():
    from xraytriage.serving.rendering import heat_layer_png, overlay_image

    pixels = _radiograph()
    heat = _blob(80, 100, 25)
    layer = heat_layer_rgba(heat, "Effusion")
    clear = heat / heat.max() < HEAT_LEVEL
    assert (layer[..., 3][clear] == 0).all() and (layer[..., 3][~clear] > 0).all()
    # the layer composited over the radiograph gives the overlay's picture (to rounding)
    alpha = layer[..., 3:4].astype(np.float32) / 255.0
    composited = pixels[..., None] * (1.0 - alpha) + layer[..., :3].astype(np.float32) * alpha
    overlay = np.asarray(
        render_findings_overlay(pixels, [OverlayItem("Effusion", 0.6, 0.3, heat)], "Grad-CAM")
    )
    assert np.abs(composited - overlay[:H, :W]).max() <= 2.0
    heat8 = np.rint(heat * 255).astype(np.uint8)
    png = Image.open(io.BytesIO(heat_layer_png(heat8, finding="Effusion")))
    assert png.mode == "RGBA" and np.asarray(png)[..., 3][clear].max() == 0
    picture = overlay_image(pixels, heat8, None, "", finding="Effusion", probability=0.6, threshold=0.3)
    assert picture.size[0] > W and "Effusion  p=0.60 (>= threshold 0.30)" in picture.info["legend"]
