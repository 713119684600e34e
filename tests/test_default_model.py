"""The bundled default model: it loads, its ONNX export matches PyTorch, and it ranks real
abnormal NIH images above real No Finding images.

The ranking check uses images the shipped model was trained on (it is trained on every shared
image), so it shows the bundled file works, not how well it generalises: the honest,
cross-validated numbers are in docs/model-card.md.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xraytriage.cli.common import default_model_path
from xraytriage.io import read_radiograph
from xraytriage.labels import ABNORMAL, NIH_FINDINGS, NO_FINDING
from xraytriage.models import load_checkpoint
from xraytriage.models.inference import OnnxPredictor, TorchPredictor

MODEL = default_model_path()


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


COLLECTION = "images-c"
"""One collection that holds both classes: the ranking then cannot come from telling collections apart."""


@pytest.fixture(scope="module")
def nih_sample(shared_data, checkpoint):
    """20 abnormal and 20 No Finding images from one NIH collection (seeded choice)."""
    with gzip.open(shared_data / "nih" / "meta" / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        meta = pd.read_csv(fh, usecols=["Image Index", "Finding Labels"])
    present = {p.name for p in (shared_data / "nih" / COLLECTION).glob("*.png")}
    meta = meta[meta["Image Index"].isin(present)]
    rng = np.random.default_rng(0)
    normal = meta[meta["Finding Labels"] == "No Finding"]["Image Index"].to_numpy()
    abnormal = meta[meta["Finding Labels"] != "No Finding"]["Image Index"].to_numpy()
    picks = [*rng.choice(abnormal, 20, replace=False), *rng.choice(normal, 20, replace=False)]
    images = np.stack(
        [
            checkpoint.preprocess.to_uint8(read_radiograph(shared_data / "nih" / COLLECTION / n).pixels)
            for n in picks
        ]
    )
    return images, np.array([1] * 20 + [0] * 20)


def test_onnx_export_shipped_beside_the_model_matches_pytorch(checkpoint, nih_sample):
    onnx_file = MODEL.with_suffix(".onnx")
    assert onnx_file.is_file(), "the ONNX export is shipped next to the model"
    onnx = OnnxPredictor(MODEL)
    assert onnx.onnx_path == onnx_file  # the shipped file is used, not a fresh export
    images, _ = nih_sample
    np.testing.assert_allclose(
        onnx.predict_proba(images), TorchPredictor(checkpoint).predict_proba(images), atol=1e-4
    )


def test_ranks_abnormal_images_above_no_finding_more_often_than_not(checkpoint, nih_sample):
    images, truth = nih_sample
    abnormal = checkpoint.abnormal_probability(TorchPredictor(checkpoint).predict_proba(images))
    pos, neg = abnormal[truth == 1], abnormal[truth == 0]
    wins = int((pos[:, None] > neg[None, :]).sum())
    pairs = pos.size * neg.size
    print(f"abnormal ranked above No Finding in {wins} of {pairs} pairs")
    assert wins > pairs / 2


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
