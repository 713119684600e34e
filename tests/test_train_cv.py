"""Patient-grouped k-fold cross-validation: disjoint folds, reproducible, complete out-of-fold file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from train_support import make_data, single_thread, tiny_config  # noqa: F401 - fixture
from xraytriage.cli.main import main
from xraytriage.data import CSVDataset, UInt8Dataset
from xraytriage.models import load_checkpoint
from xraytriage.models.inference import TorchPredictor
from xraytriage.train.config import TrainConfig
from xraytriage.train.data import kfold


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    csv = make_data(root / "data", n_images=36, size=32, n_patients=12, seed=6)
    config = root / "cv.yaml"
    config.write_text(__import__("yaml").safe_dump(tiny_config(csv, epochs=2)))
    assert main(["cv", str(config), "--folds", "3", "--output", str(root / "run"), "--set", "seed=11"]) == 0
    return root / "run", csv


def test_folds_are_patient_disjoint_and_cover_every_image_once(cv_run):
    run, _ = cv_run
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == 36 and oof["path"].is_unique
    assert sorted(oof["fold"].unique()) == [1, 2, 3]
    assert (oof.groupby("patient_id")["fold"].nunique() == 1).all()
    for name in ("Mass", "Nodule", "Effusion", "No Finding"):
        assert oof[f"prob_{name}"].between(0, 1).all() and oof[name].isin([0, 1]).all()
    for k in (1, 2, 3):
        assert (run / f"fold-{k}" / "best.pt").is_file() and (run / f"fold-{k}" / "metrics.csv").is_file()


def test_out_of_fold_probabilities_come_from_the_fold_model_that_did_not_see_the_image(cv_run):
    run, csv = cv_run
    oof = pd.read_csv(run / "oof_predictions.csv")
    fold2 = oof[oof["fold"] == 2]
    ckpt = load_checkpoint(run / "fold-2" / "best.pt")
    dataset = CSVDataset(csv, labels=ckpt.label_names)
    order = {p: i for i, p in enumerate(dataset.paths)}
    images = UInt8Dataset(dataset.subset([order[p] for p in fold2["path"]]), ckpt.preprocess)
    probs = TorchPredictor(ckpt).predict_proba(np.stack([images.image(i) for i in range(len(images))]))
    assert np.allclose(probs, fold2[[f"prob_{n}" for n in ckpt.label_names]].to_numpy(), atol=1e-4)
    train_paths = set(dataset.paths) - set(fold2["path"])
    assert ckpt.metrics["n_train"] == len(train_paths)


def test_summary_reports_mean_and_std_per_metric_and_per_epoch(cv_run):
    run, _ = cv_run
    summary = json.loads((run / "cv_summary.json").read_text())
    assert summary["folds"] == 3 and summary["split_seed"] == 11
    stats = summary["metrics"]["val_loss"]
    assert len(stats["folds"]) == 3 and stats["mean"] == pytest.approx(np.mean(stats["folds"]))
    assert stats["std"] == pytest.approx(np.std(stats["folds"], ddof=1))
    epochs = pd.read_csv(run / "cv_epochs.csv")
    assert epochs["epoch"].tolist() == [1, 2] and (epochs["n_folds"] == 3).all()
    assert {"train_loss_mean", "train_loss_std", "mean_auc_all_outputs_mean", "val_loss_std"} <= set(
        epochs.columns
    )
    # the means are named by what they average: 3 findings, and every output with No Finding
    assert list(summary["metrics"])[:2] == ["mean_auc_3_findings", "mean_auc_all_outputs"]
    pooled = summary["pooled_oof"]
    assert pooled["mean_auc_3_findings"] == pytest.approx(
        np.nanmean([pooled[f"auc/{n}"] for n in ("Mass", "Nodule", "Effusion")])
    )


def test_folds_are_reproducible_from_the_seed(cv_run):
    run, csv = cv_run
    dataset = CSVDataset(csv)
    oof = pd.read_csv(run / "oof_predictions.csv").set_index("path").loc[dataset.paths]
    again = np.zeros(len(dataset), int)
    for k, (_, val) in enumerate(kfold(dataset, 3, seed=11)):
        again[val] = k + 1
    assert (again == oof["fold"].to_numpy()).all()
    other = np.zeros(len(dataset), int)
    for k, (_, val) in enumerate(kfold(dataset, 3, seed=12)):
        other[val] = k + 1
    assert (other != again).any()


def test_cv_refuses_a_separate_validation_set(tmp_path):
    csv = make_data(tmp_path / "data", n_images=8)
    config = TrainConfig.from_dict(
        tiny_config(csv, data={"val_kind": "csv", "val_options": {"csv": str(csv)}})
    )
    from xraytriage.errors import ConfigError
    from xraytriage.train.cv import run_cv

    with pytest.raises(ConfigError, match="val_kind"):
        run_cv(config, tmp_path / "run", folds=2)
