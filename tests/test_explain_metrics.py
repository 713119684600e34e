"""Boxes from heatmaps and the localisation metrics, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xraytriage.evaluate.localization import (
    box_iobb,
    box_iou,
    load_ground_truth,
    markdown_table,
    pointing_hit,
    random_same_size,
    score_case,
    summarize,
)
from xraytriage.explain.boxes import (
    Box,
    SizePrior,
    boxes_from_heatmap,
    learn_size_priors,
    load_size_priors,
)


def test_iou_and_iobb_hand_computed():
    truth = Box(0, 0, 10, 10)
    pred = Box(5, 0, 10, 10)  # overlap 5 x 10 = 50
    assert box_iou(truth, pred) == pytest.approx(50 / 150)
    assert box_iobb(truth, pred) == pytest.approx(50 / 100)
    inside = Box(2, 2, 4, 4)  # fully inside the truth: IoBB 1, IoU 16/100
    assert box_iobb(truth, inside) == pytest.approx(1.0)
    assert box_iou(truth, inside) == pytest.approx(0.16)
    assert box_iou(truth, Box(20, 20, 5, 5)) == 0.0 and box_iobb(truth, Box(10, 0, 5, 5)) == 0.0


def test_pointing_game_hand_computed():
    heat = np.zeros((20, 20), np.float32)
    heat[12, 4] = 1.0  # pixel centre (x=4.5, y=12.5)
    assert pointing_hit(heat, Box(3, 10, 3, 5))
    assert not pointing_hit(heat, Box(5, 10, 3, 5))
    assert not pointing_hit(np.zeros((20, 20)), Box(0, 0, 20, 20))  # no evidence points nowhere


def test_score_case_hits_and_false_positives():
    truths = [Box(0, 0, 10, 10), Box(50, 50, 10, 10)]
    predicted = [Box(0, 0, 10, 20), Box(80, 80, 5, 5)]  # IoU with truth 1 = 0.5, IoBB = 0.5
    heat = np.zeros((100, 100), np.float32)
    heat[55, 55] = 1
    case = score_case("a.png", "Mass", heat, truths, predicted)
    assert case.hits[("IoU", 0.4)] == [True, False]
    assert case.hits[("IoU", 0.5)] == [False, False]  # strictly greater, as in Wang et al.
    assert case.hits[("IoBB", 0.25)] == [True, False]
    assert case.false_positives[("IoU", 0.4)] == 1 and case.false_positives[("IoU", 0.5)] == 2
    assert case.pointing == [False, True]
    table = summarize([case, score_case("b.png", "Mass", heat, [Box(0, 0, 5, 5)], [])])
    row = table[(table.finding == "Mass") & (table.metric == "IoU") & np.isclose(table.threshold, 0.4)].iloc[
        0
    ]
    assert row.accuracy == pytest.approx(1 / 3) and row.afp == pytest.approx(1 / 2)  # 1 FP over 2 images
    pointing = table[(table.finding == "Mass") & (table.metric == "pointing")].iloc[0]
    assert pointing.accuracy == pytest.approx(1 / 3) and pointing.boxes == 3
    mean = table[(table.finding == "Mean") & (table.metric == "IoU") & np.isclose(table.threshold, 0.4)]
    assert mean.accuracy.iloc[0] == pytest.approx(1 / 3)
    markdown = markdown_table(table)
    assert "T(IoU)=0.4 Acc." in markdown
    assert markdown.count("Pointing game") == 1  # one row, whatever the number of findings


def test_boxes_from_heatmap_finds_each_blob_best_first():
    heat = np.zeros((64, 64), np.float32)
    heat[10:20, 30:50] = 1.0  # big blob
    heat[40:44, 5:9] = 0.8  # small blob
    boxes = boxes_from_heatmap(heat, threshold=0.5)
    assert [(b.x, b.y, b.w, b.h) for b in boxes] == [(30, 10, 20, 10), (5, 40, 4, 4)]
    assert boxes[0].score > boxes[1].score and sum(b.score for b in boxes) == pytest.approx(1.0)
    assert boxes_from_heatmap(heat, threshold=0.9)[0].w == 20  # small blob below 0.9 x max
    assert boxes_from_heatmap(np.zeros((8, 8))) == []


def test_size_prior_prefers_the_typical_size():
    yy, xx = np.mgrid[0:100, 0:100]
    heat = np.exp(-((yy - 50) ** 2 + (xx - 50) ** 2) / (2 * 15.0**2)).astype(np.float32)
    small, large = SizePrior(0.12, 0.12, 0.3), SizePrior(0.6, 0.6, 0.3)
    small_box = boxes_from_heatmap(heat, prior=small, max_boxes=1)[0]
    large_box = boxes_from_heatmap(heat, prior=large, max_boxes=1)[0]
    assert small_box.w < 25 < 40 < large_box.w
    assert abs(small_box.x + small_box.w / 2 - 50) <= 1  # both centred on the blob
    assert SizePrior(0.1, 0.2).weight(0.1, 0.2) == pytest.approx(1.0)


def test_size_priors_learned_as_relative_sizes():
    boxes = pd.DataFrame(
        {"finding": ["Nodule"] * 3 + ["Infiltrate"], "w": [50, 60, 70, 300], "h": [40, 60, 80, 200]}
    )
    priors = learn_size_priors(boxes, 1000, 1000)
    assert priors["Nodule"].width == pytest.approx(0.06) and priors["Nodule"].height == pytest.approx(0.06)
    assert "Infiltration" in priors and priors["Nodule"].count == 3


def test_shipped_priors_are_those_of_the_nih_box_list(shared_data):
    from xraytriage.data.nih import read_bbox_list

    learned = learn_size_priors(read_bbox_list(shared_data / "nih/meta/BBox_List_2017.csv.gz"))
    assert load_size_priors() == learned
    assert learned["Nodule"].width < learned["Mass"].width < learned["Cardiomegaly"].width


def test_nih_ground_truth_is_scaled_from_1024(shared_data):
    truth = load_ground_truth(shared_data / "nih/meta/BBox_List_2017.csv.gz")
    assert truth.reference_size == 1024 and len(truth.boxes) == 984
    assert {"Infiltration", "Mass", "Nodule"} <= set(truth.boxes["finding"])
    assert list(truth.boxes.columns) == ["image", "finding", "x", "y", "w", "h"]


def test_pixel_space_ground_truth(tmp_path):
    path = tmp_path / "boxes.csv"
    pd.DataFrame([{"path": "images/a.png", "finding": "mass", "x": 1, "y": 2, "w": 3, "h": 4}]).to_csv(
        path, index=False
    )
    truth = load_ground_truth(path)
    assert truth.reference_size is None
    assert truth.boxes.iloc[0].tolist() == ["a.png", "Mass", 1, 2, 3, 4]


def test_random_control_is_seeded_same_size_and_inside_the_image():
    boxes = [Box(10, 20, 30, 40, 0.9), Box(0, 0, 200, 10, 0.5)]  # the second is wider than the image
    a = random_same_size(boxes, 100, 80, np.random.default_rng(3))
    b = random_same_size(boxes, 100, 80, np.random.default_rng(3))
    assert a == b and a != random_same_size(boxes, 100, 80, np.random.default_rng(4))
    assert [(r.w, r.h, r.score) for r in a] == [(30, 40, 0.9), (80, 10, 0.5)]
    assert all(r.x >= 0 and r.x + r.w <= 80 and r.y >= 0 and r.y + r.h <= 100 for r in a)
