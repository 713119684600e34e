"""The bundled fracture model: complete, small, scoped to the four FracAtlas body parts, its
ONNX twin agrees with PyTorch, and it ranks real fractured films above non-fractured ones.

The ranking uses FracAtlas images the shipped model was trained on (it is trained on every
readable FracAtlas image), so it shows the bundled file works, not how well it generalises:
the out-of-fold numbers are in docs/fracture-model-card.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xraytriage.models import load_checkpoint

MODEL = Path(__file__).resolve().parents[1] / "src" / "xraytriage" / "assets" / "fracture_model" / "model.pt"
pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="bundled fracture model absent")


@pytest.fixture(scope="module")
def checkpoint():
    return load_checkpoint(MODEL)


def test_fracture_model_is_complete_scoped_and_small(checkpoint):
    assert checkpoint.label_names == ["Fracture"]
    assert checkpoint.scope == {"body_parts": ["HAND", "LEG", "HIP", "SHOULDER"], "views": []}
    assert checkpoint.train_config["data"]["kind"] == "fracatlas"
    assert "Fracture" in checkpoint.thresholds and "Fracture" in checkpoint.calibration
    assert checkpoint.metrics["calibration"]["thresholds"] == "youden"
    assert len(checkpoint.training_images) > 2000
    assert all(
        v.dtype.is_floating_point is False or v.element_size() == 2 for v in checkpoint.state_dict.values()
    )
    total = sum(p.stat().st_size for p in MODEL.parent.iterdir() if p.is_file())
    assert total < 8 * 2**20, f"bundled fracture model files take {total / 2**20:.1f} MiB"


def test_a_chest_header_is_out_of_the_fracture_models_scope(checkpoint):
    from xraytriage.scope import scope_problem

    assert scope_problem({"body_part": "HAND"}, checkpoint) is None
    assert "out of scope" in scope_problem({"body_part": "CHEST"}, checkpoint)


def test_onnx_twin_matches_pytorch_and_ranks_fractures_first(checkpoint, shared_data):
    from xraytriage.io import read_radiograph
    from xraytriage.models.inference import OnnxPredictor, TorchPredictor

    root = shared_data / "msk" / "fracatlas"
    table = pd.read_csv(root / "dataset.csv")
    table = table[table["image_id"] < "IMG0004028"]  # leave out the truncated files' id range
    picks = pd.concat(
        [
            table[table["fractured"] == 1].sample(12, random_state=0),
            table[table["fractured"] == 0].sample(12, random_state=0),
        ]
    )
    images = np.stack(
        [
            checkpoint.preprocess.to_uint8(read_radiograph(root / "images" / r.folder / r.image_id).pixels)
            for r in picks.itertuples()
        ]
    )
    torch_p = checkpoint.probabilities(TorchPredictor(checkpoint).predict_logits(images))[:, 0]
    onnx_p = checkpoint.probabilities(OnnxPredictor(MODEL, checkpoint=checkpoint).predict_logits(images))[
        :, 0
    ]
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)
    fractured = picks["fractured"].to_numpy() == 1
    wins = (torch_p[fractured][:, None] > torch_p[~fractured][None, :]).mean()
    print(f"fractured above non-fractured in {wins:.0%} of pairs (training images)")
    assert wins > 0.6
