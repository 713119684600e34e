"""The bundled default model: it loads, its ONNX export matches PyTorch, and it tells pneumonia
from normal on chest X-rays it never saw well above what an untrained network or an image
statistic can.

The shipped model was trained on every shared NIH image, so a ranking on NIH images would only
show that it remembers them. The pediatric set (Kermany et al.; another hospital, children) is
never in its training list (checked below): a seeded 100 PNEUMONIA + 100 NORMAL sample of it is
scored with the model's ``Pneumonia`` output. On that sample the shipped model measured ROC AUC
0.867 (docs/model-card.md: 0.840 on all 802 images); the floor sits 0.08 below. The controls run
the same scoring with a seeded untrained copy of the network and with image statistics (mean
intensity, contrast, either sign): each must fall below the floor, so the floor cannot be met by
a network that learned nothing. (The ``Abnormal`` output is not used here: on this set untrained
copies reach up to 0.77 with it, about what it measures itself, so it could not tell them apart.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from xraytriage.cli.common import default_model_path
from xraytriage.io import read_radiograph
from xraytriage.labels import ABNORMAL, NIH_FINDINGS, NO_FINDING
from xraytriage.models import load_checkpoint
from xraytriage.models.factory import build_model
from xraytriage.models.inference import OnnxPredictor, TorchPredictor

MODEL = default_model_path()
PER_CLASS = 100
PNEUMONIA_AUC_FLOOR = 0.78
"""Measured 0.867 on the sample below (seed 0) with the shipped model, minus 0.08 (rounded down);
untrained copies (seeds 0-9) reach at most 0.71, the best image statistic 0.73."""
UNTRAINED_SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def checkpoint():
    assert MODEL.is_file(), f"bundled model missing: {MODEL}"
    return load_checkpoint(MODEL)


def test_bundled_model_is_complete_and_small(checkpoint):
    assert checkpoint.label_names == [*NIH_FINDINGS, NO_FINDING, ABNORMAL]
    assert set(checkpoint.thresholds) == set(checkpoint.label_names)
    assert set(checkpoint.calibration) == set(checkpoint.label_names)
    assert checkpoint.abnormal == {"label": ABNORMAL, "invert": False}
    assert checkpoint.data_fingerprint and checkpoint.train_config
    # the shipped operating points: 90% specificity per label, capped normal flag rate, and
    # P(abnormal) at the NIH population's prevalence, all chosen on out-of-fold predictions
    record = checkpoint.metrics["calibration"]
    assert record["thresholds"] == "specificity:0.9"
    assert record["deployment_prevalence"][ABNORMAL]["deployment_prevalence"] == pytest.approx(0.46)
    assert record["normal_flag_cap"]["rate_after"] <= record["normal_flag_cap"]["max_rate"] <= 0.15
    assert checkpoint.study_flag_threshold is not None
    assert len(checkpoint.training_images) > 1000  # it knows what it was trained on
    total = sum(p.stat().st_size for p in MODEL.parent.iterdir() if p.is_file())
    assert total < 15 * 2**20, f"bundled model files take {total / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def pediatric_sample(shared_data, checkpoint):
    """Seeded 100 PNEUMONIA and 100 NORMAL pediatric images, preprocessed, with truth (1 = pneumonia)
    and the raw pixels (for the image-statistic controls)."""
    root = shared_data / "pediatric"
    labels = pd.read_csv(root / "labels.csv")
    rng = np.random.default_rng(0)
    pneumonia = labels.loc[labels["label"] == "PNEUMONIA", "file"].to_numpy()
    normal = labels.loc[labels["label"] == "NORMAL", "file"].to_numpy()
    assert min(pneumonia.size, normal.size) >= PER_CLASS, "the pediatric set has too few images per class"
    picks = [*rng.choice(pneumonia, PER_CLASS, replace=False), *rng.choice(normal, PER_CLASS, replace=False)]
    paths = [root / p for p in picks]
    seen = checkpoint.seen_in_training([str(p) for p in paths])
    assert not seen, f"the model was trained on {len(seen)} of these images: the test needs unseen ones"
    raw = [read_radiograph(p).pixels for p in paths]
    images = np.stack([checkpoint.preprocess.to_uint8(r) for r in raw])
    truth = np.array([1] * PER_CLASS + [0] * PER_CLASS)
    return images, truth, raw


def pneumonia_auc(checkpoint, images: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of the checkpoint's ``Pneumonia`` output: the one body the model and controls share."""
    probs = TorchPredictor(checkpoint).predict_proba(images)
    return float(roc_auc_score(truth, probs[:, checkpoint.label_names.index("Pneumonia")]))


def untrained_copy(checkpoint, seed: int):
    """The same architecture, labels, calibration and preprocessing with seeded random weights."""
    torch.manual_seed(seed)
    return dataclasses.replace(checkpoint, state_dict=build_model(checkpoint.model).state_dict())


def test_onnx_export_shipped_beside_the_model_matches_pytorch(checkpoint, pediatric_sample):
    onnx_file = MODEL.with_suffix(".onnx")
    assert onnx_file.is_file(), "the ONNX export is shipped next to the model"
    onnx = OnnxPredictor(MODEL)
    assert onnx.onnx_path == onnx_file  # the shipped file is used, not a fresh export
    images = pediatric_sample[0][::10]
    np.testing.assert_allclose(
        onnx.predict_proba(images), TorchPredictor(checkpoint).predict_proba(images), atol=1e-4
    )


def test_tells_pneumonia_from_normal_on_unseen_images_above_the_floor(checkpoint, pediatric_sample):
    images, truth, _ = pediatric_sample
    auc = pneumonia_auc(checkpoint, images, truth)
    print(f"shipped model: pediatric Pneumonia AUC {auc:.3f} (floor {PNEUMONIA_AUC_FLOOR})")
    assert auc >= PNEUMONIA_AUC_FLOOR


@pytest.mark.slow  # five networks (about 10 s): a check of the floor, not of the shipped file
def test_untrained_copies_of_the_network_fail_the_floor(checkpoint, pediatric_sample):
    """The control: if a network that learned nothing met the floor, the test above would prove nothing."""
    images, truth, _ = pediatric_sample
    aucs = {seed: pneumonia_auc(untrained_copy(checkpoint, seed), images, truth) for seed in UNTRAINED_SEEDS}
    print("untrained copies: " + ", ".join(f"seed {s} AUC {a:.3f}" for s, a in aucs.items()))
    assert all(auc < PNEUMONIA_AUC_FLOOR for auc in aucs.values()), aucs
    assert len({round(a, 6) for a in aucs.values()}) == len(aucs)  # the seeds really differ


IMAGE_STATISTICS: dict[str, Callable[[np.ndarray], float]] = {
    "mean intensity": lambda a: float(np.mean(a)),
    "negated mean intensity": lambda a: -float(np.mean(a)),
    "contrast (std)": lambda a: float(np.std(a)),
    "negated contrast (std)": lambda a: -float(np.std(a)),
}


@pytest.mark.parametrize("statistic", IMAGE_STATISTICS)
def test_image_statistics_fail_the_floor(pediatric_sample, statistic):
    """A score that ignores the anatomy (raw or preprocessed pixels' mean or spread) stays below the floor."""
    images, truth, raw = pediatric_sample
    score = IMAGE_STATISTICS[statistic]
    for name, pixels in (("raw", raw), ("preprocessed", list(images))):
        auc = float(roc_auc_score(truth, [score(p) for p in pixels]))
        print(f"{statistic} of {name} pixels: AUC {auc:.3f}")
        assert auc < PNEUMONIA_AUC_FLOOR, f"{statistic} of {name} pixels reaches {auc:.3f}"


def test_demo_puts_known_abnormal_samples_above_known_normal_ones(tmp_path, capsys):
    """The bundled samples come from one collection with their NIH labels (samples/labels.csv);
    they are training images, and the demo says so."""
    import csv

    from xraytriage.cli.demo import samples_dir
    from xraytriage.cli.main import main
    from xraytriage.triage.worklist import read_worklist_csv

    assert main(["demo", "--output", str(tmp_path), "--no-progress", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "in this model's training set" in printed
    with open(samples_dir() / "labels.csv", newline="") as fh:
        normal = {r["file"]: r["finding_labels"] == "No Finding" for r in csv.DictReader(fh)}
    rows = [r for r in read_worklist_csv(tmp_path / "worklist.csv") if Path(r["path"]).name in normal]
    assert len(rows) == len(normal)
    ranks_normal = [r["rank"] for r in rows if normal[Path(r["path"]).name]]
    ranks_abnormal = [r["rank"] for r in rows if not normal[Path(r["path"]).name]]
    pairs = [(a, n) for a in ranks_abnormal for n in ranks_normal]
    above = sum(a < n for a, n in pairs)
    print(f"abnormal sample above normal sample in {above} of {len(pairs)} pairs")
    assert above >= 0.75 * len(pairs)
    flagged_normal = [r for r in rows if normal[Path(r["path"]).name] and r["flagged"]]
    assert len(flagged_normal) <= len(ranks_normal) // 2  # normals mostly unflagged
