"""The shipped-model workflow: train on every image (no validation), then set thresholds and
calibration from held-out (out-of-fold) predictions with `xraytriage calibrate`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from train_support import LABELS, make_data, single_thread, tiny_config  # noqa: F401 - fixture
from xraytriage.cli.main import main
from xraytriage.evaluate.calibration import expected_calibration_error
from xraytriage.models import load_checkpoint
from xraytriage.train.config import TrainConfig
from xraytriage.train.run import run_training


@pytest.fixture(scope="module")
def all_images_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("final")
    csv = make_data(root / "data", n_images=24)
    config = TrainConfig.from_dict(tiny_config(csv, epochs=2, data={"val_fraction": 0.0}))
    run_training(config, root / "run")
    return root / "run"


def test_training_on_every_image_keeps_the_last_epoch(all_images_run):
    summary = json.loads((all_images_run / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 2
    best = load_checkpoint(all_images_run / "best.pt")
    assert best.metrics["n_val"] == 0 and best.metrics["n_train"] == 24
    assert best.thresholds == {}  # nothing to choose them on: `calibrate` sets them
    assert not (all_images_run / "val_predictions.csv").exists()
    metrics = pd.read_csv(all_images_run / "metrics.csv")
    assert len(metrics) == 2 and metrics["mean_auc_all_outputs"].isna().all()


def test_negative_val_fraction_is_still_refused(tmp_path):
    csv = make_data(tmp_path / "d", n_images=8)
    from xraytriage.errors import ConfigError

    with pytest.raises(ConfigError, match="val_fraction"):
        TrainConfig.from_dict(tiny_config(csv, data={"val_fraction": -0.1}))


def test_calibrate_sets_thresholds_and_calibration_from_held_out_predictions(all_images_run, tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {"path": [f"img{i}.png" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)]}
    )
    for j, name in enumerate(LABELS):
        y = (rng.random(n) < 0.3).astype(float)
        true_logit = (2 * y - 1) * 1.5 + rng.normal(0, 1.0, n)
        # overconfident model: logits 3x too large, shifted per label
        frame[name] = y
        frame[f"prob_{name}"] = 1 / (1 + np.exp(-(3 * true_logit + j - 1)))
    preds = tmp_path / "oof_predictions.csv"
    frame.to_csv(preds, index=False)
    out = tmp_path / "calibrated.pt"
    code = main(["calibrate", "--model", str(all_images_run / "best.pt"), "--predictions", str(preds),
                 "--output", str(out)])  # fmt: skip
    assert code == 0
    ckpt = load_checkpoint(out)
    assert set(ckpt.thresholds) == set(LABELS) and set(ckpt.calibration) == set(LABELS)
    assert all(c["method"] == "platt" for c in ckpt.calibration.values())
    logits = np.log(
        frame[[f"prob_{n}" for n in LABELS]].to_numpy()
        / (1 - frame[[f"prob_{n}" for n in LABELS]].to_numpy())
    )
    calibrated = ckpt.probabilities(logits)
    for j, name in enumerate(LABELS):
        before = expected_calibration_error(frame[name].to_numpy(), frame[f"prob_{name}"].to_numpy())
        after = expected_calibration_error(frame[name].to_numpy(), calibrated[:, j])
        assert after < before, name
    # weights untouched
    original = load_checkpoint(all_images_run / "best.pt")
    assert all((original.state_dict[k] == ckpt.state_dict[k]).all() for k in original.state_dict)


def test_calibrate_names_missing_labels(all_images_run, tmp_path):
    preds = tmp_path / "p.csv"
    pd.DataFrame({"path": ["a.png"], "Mass": [1.0], "prob_Mass": [0.7]}).to_csv(preds, index=False)
    code = main(["calibrate", "--model", str(all_images_run / "best.pt"), "--predictions", str(preds),
                 "--output", str(tmp_path / "x.pt")])  # fmt: skip
    assert code == 2


def test_keep_last_makes_the_last_epoch_best_even_when_validation_got_worse(tmp_path):
    csv = make_data(tmp_path / "d", n_images=24)
    config = TrainConfig.from_dict(
        tiny_config(csv, epochs=3, early_stopping={"keep_last": True}, optim={"lr": 0.5})  # diverges
    )
    run_training(config, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] == 3
    assert load_checkpoint(tmp_path / "run" / "best.pt").metrics["epoch"] == 3
