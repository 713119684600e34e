"""The bundled default model: it loads, its ONNX export matches PyTorch, and it ranks real
abnormal NIH images above real No Finding images.

The ranking check uses images the shipped model was trained on (it is trained on every shared
image), so it shows the bundled file works, not how well it generalises: the honest,
cross-validated numbers are in docs/model-card.md.
"""

from __future__ import annotations

import gzip

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
    total = sum(p.stat().st_size for p in MODEL.parent.iterdir() if p.is_file())
    assert total < 15 * 2**20, f"bundled model files take {total / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def nih_sample(shared_data, checkpoint):
    """20 abnormal and 20 No Finding images from the 256 px NIH folder (seeded choice)."""
    with gzip.open(shared_data / "nih" / "meta" / "Data_Entry_2017_v2020.csv.gz", "rt") as fh:
        meta = pd.read_csv(fh, usecols=["Image Index", "Finding Labels"])
    present = {p.name for p in (shared_data / "nih" / "images").glob("*.png")}
    meta = meta[meta["Image Index"].isin(present)]
    rng = np.random.default_rng(0)
    normal = meta[meta["Finding Labels"] == "No Finding"]["Image Index"].to_numpy()
    abnormal = meta[meta["Finding Labels"] != "No Finding"]["Image Index"].to_numpy()
    picks = [*rng.choice(abnormal, 20, replace=False), *rng.choice(normal, 20, replace=False)]
    images = np.stack(
        [
            checkpoint.preprocess.to_uint8(read_radiograph(shared_data / "nih" / "images" / n).pixels)
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
