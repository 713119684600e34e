"""End to end on planted lesions: a short-trained model's heatmaps point at the lesions, its boxes
overlap them, far above the random control; the CLI writes overlays and boxes and survives a
corrupt file. This proves the pipeline (geometry, layer, boxes, metrics), not a real model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xraytriage.cli.main import main
from xraytriage.evaluate.localization import evaluate_localization, load_ground_truth
from xraytriage.explain import Explainer, explain_image
from xraytriage.io import read_radiograph

pytestmark = pytest.mark.slow  # most tests share a localiser trained for the session

LARGE_LESIONS = ["Mass", "Effusion"]
"""Nodules are 5 px boxes on 64 px images, below the 8 px cells of the map; they are not asserted."""


@pytest.fixture(scope="session")
def localizer(synthetic_dir):
    """The tiny VGG-like network trained a little longer than ``tiny_checkpoint`` (~10 s)."""
    from helpers import train_tiny_checkpoint

    return train_tiny_checkpoint(synthetic_dir, epochs=20)


@pytest.fixture(scope="session")
def localizer_path(localizer, tmp_path_factory):
    return localizer.save(tmp_path_factory.mktemp("localizer") / "localizer.pt")


@pytest.fixture(scope="session")
def holdout_result(localizer, synthetic_holdout_dir):
    explainer = Explainer(localizer, size_prior=True)
    truth = load_ground_truth(synthetic_holdout_dir / "boxes.csv")
    return evaluate_localization(
        explainer, [synthetic_holdout_dir], truth, max_boxes=1, random_repeats=3, progress=False
    )


def _accuracy(table: pd.DataFrame, source: str, metric: str, threshold: float | None) -> float:
    rows = table[(table.source == source) & (table.metric == metric) & table.finding.isin(LARGE_LESIONS)]
    rows = rows[rows.threshold.isna()] if threshold is None else rows[np.isclose(rows.threshold, threshold)]
    return float(np.average(rows.accuracy, weights=rows.boxes))


def test_automatic_layer_gives_a_usable_grid(localizer):
    explainer = Explainer(localizer)
    assert explainer.layer == "features.26" and explainer.feature_shape == (8, 8)


def test_heatmap_maximum_falls_inside_the_planted_box(holdout_result):
    model = _accuracy(holdout_result.table, "model", "pointing", None)
    chance = _accuracy(holdout_result.table, "random", "pointing", None)
    assert model > 0.6, holdout_result.table
    assert model > chance + 0.4


def test_boxes_overlap_the_planted_box(holdout_result):
    per_box = holdout_result.per_box[holdout_result.per_box.finding.isin(LARGE_LESIONS)]
    assert (per_box.best_iou > 0.3).mean() > 0.5
    assert (
        _accuracy(holdout_result.table, "model", "IoU", 0.3)
        > _accuracy(holdout_result.table, "random", "IoU", 0.3) + 0.3
    )


def test_explain_image_api_top_and_named(localizer, synthetic_holdout_dir):
    explainer = Explainer(localizer)
    labels = pd.read_csv(synthetic_holdout_dir / "labels.csv")
    positive = labels[labels.Mass == 1].iloc[0]
    radiograph = read_radiograph(synthetic_holdout_dir / positive.path)
    top = explain_image(explainer, radiograph, "top")
    assert 1 <= len(top) <= 4 and all(e.above_threshold for e in top)
    assert [e.probability for e in top] == sorted((e.probability for e in top), reverse=True)
    (mass,) = explain_image(explainer, radiograph, "mass")
    assert mass.finding == "Mass" and mass.heatmap.shape == (64, 64)
    assert mass.heatmap.min() >= 0.0 and mass.heatmap.max() == pytest.approx(1.0)
    # The preprocessed uint8 (triage cache) gives the same map, at the original size asked for.
    cached = explainer.prepare(radiograph).uint8
    (again,) = explain_image(explainer, cached, ["Mass"], original_size=(64, 64))
    np.testing.assert_allclose(again.heatmap, mass.heatmap, atol=1e-5)


def test_cli_explain_writes_overlays_and_boxes_and_survives_a_corrupt_file(
    localizer_path, synthetic_holdout_dir, tmp_path, capsys
):
    labels = pd.read_csv(synthetic_holdout_dir / "labels.csv")
    images = [synthetic_holdout_dir / p for p in labels.path[:3]]
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out"
    code = main(["explain", str(images[0]), str(corrupt), *map(str, images[1:]), "--model", str(localizer_path),
                 "--output", str(out), "--findings", "all", "--size-prior"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1 and "broken.png" in captured.err
    for image in images:
        for finding in ("Mass", "Nodule", "Effusion"):
            png = out / f"{image.stem}_{finding}.png"
            assert png.is_file()
            with Image.open(png) as overlay:  # the 64 px image at the top left, the legend beside it
                assert overlay.size[0] > 64 and overlay.size[1] >= 64
                assert "Grad-CAM" in overlay.text["Description"] and finding in overlay.text["Description"]
        with Image.open(out / f"{image.stem}_findings.png") as combined:  # all three, one legend
            assert all(f in combined.text["Description"] for f in ("Mass", "Nodule", "Effusion"))
    boxes = pd.read_csv(out / "boxes.csv")
    assert list(boxes.columns) == ["path", "finding", "x", "y", "w", "h", "score"]
    assert set(boxes.path) <= {str(p) for p in images} and len(boxes) >= 6
    assert ((boxes.x >= 0) & (boxes.x + boxes.w <= 64) & (boxes.y >= 0) & (boxes.y + boxes.h <= 64)).all()
    # one best box per label per image
    assert not boxes.duplicated(["path", "finding"]).any()


def test_cli_explain_top_says_when_nothing_is_above_threshold(
    localizer_path, synthetic_holdout_dir, tmp_path, capsys
):
    labels = pd.read_csv(synthetic_holdout_dir / "labels.csv")
    normal = synthetic_holdout_dir / labels[labels["No Finding"] == 1].path.iloc[0]
    out = tmp_path / "out"
    assert main(["explain", str(normal), "--model", str(localizer_path), "--output", str(out)]) == 0
    assert "no finding at or above its operating threshold" in capsys.readouterr().out
    assert not list(out.glob("*.png")) and pd.read_csv(out / "boxes.csv").empty


def test_cli_explain_feature_maps(localizer_path, synthetic_holdout_dir, tmp_path):
    image = next((synthetic_holdout_dir / "images").glob("*.png"))
    out = tmp_path / "out"
    main(["explain", str(image), "--model", str(localizer_path), "--output", str(out),
          "--findings", "Mass", "--feature-maps"])  # fmt: skip
    grids = sorted((out / "feature_maps" / image.stem).glob("*.png"))
    assert len(grids) == 11  # 10 conv layers + the first-layer filters
    assert Image.open(grids[0]).size[0] > 64


def test_cli_explain_without_model_names_the_problem(tmp_path, capsys, monkeypatch):
    import xraytriage.models.published as published

    monkeypatch.setattr(published, "BUNDLED_MODEL", tmp_path / "missing" / "model.pt")
    assert main(["explain", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "the bundled default model" in capsys.readouterr().err


def test_cli_localize_eval_writes_tables(localizer_path, synthetic_holdout_dir, tmp_path):
    out = tmp_path / "loc"
    code = main(["localize-eval", "--model", str(localizer_path), "--images", str(synthetic_holdout_dir / "images"),
                 "--boxes", str(synthetic_holdout_dir / "boxes.csv"), "--output", str(out),
                 "--random-repeats", "1"])  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "localization.csv")
    assert set(table.source) == {"model", "random"} and {"IoBB", "IoU", "pointing"} <= set(table.metric)
    assert {"Mass", "Nodule", "Effusion", "Mean"} <= set(table.finding)
    markdown = (out / "localization.md").read_text()
    assert "T(IoBB)=0.1 Acc." in markdown and "Pointing game" in markdown
