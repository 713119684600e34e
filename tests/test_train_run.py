"""Training runs on synthetic planted-lesion images: learning, run directory, resume, every option."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from train_support import make_data, single_thread, tiny_config  # noqa: F401 - fixture
from xraytriage.data import CSVDataset, UInt8Dataset
from xraytriage.models import load_checkpoint
from xraytriage.models.inference import TorchPredictor
from xraytriage.train.config import TrainConfig
from xraytriage.train.metrics import label_auc
from xraytriage.train.run import run_training
from xraytriage.train.trainer import Trainer, head_module

# Training runs (the whole trainer, every option combination): `make test`, not the
# `make test-fast` edit loop.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("learn"), n_images=160, size=48, n_patients=80, seed=3)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("small"), n_images=32, size=32, n_patients=16, seed=4)


@pytest.fixture(scope="module")
def learned_run(learn_data, tmp_path_factory):
    """A short real run: 6 epochs of a tiny VGG-like network on 48 px images."""
    output = tmp_path_factory.mktemp("runs") / "learn"
    config = TrainConfig.from_dict(
        tiny_config(
            learn_data,
            data={
                "options": {"csv": str(learn_data), "labels": ["Mass", "Effusion", "No Finding"]},
                "val_fraction": 0.3,
            },
            preprocess={"size": 48},
            optim={"lr": 3e-3},
            augment={"rotate": 5, "translate": 0.03, "scale": [0.95, 1.05], "hflip": 0.5},
            epochs=6,
            batch_size=16,
            max_steps_per_epoch=None,
        )
    )
    [result] = run_training(config, output)
    return result


def test_short_run_learns_the_planted_lesions(learned_run):
    assert learned_run.best_metrics["mean_auc_2_findings"] > 0.75  # Mass and Effusion, not No Finding
    assert learned_run.best_metrics["auc/Mass"] > 0.7 and learned_run.best_metrics["auc/Effusion"] > 0.7


def test_run_directory_holds_metrics_logs_checkpoints_and_summary(learned_run):
    out = learned_run.output
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    for column in (
        "lr",
        "train_loss",
        "val_loss",
        "mean_auc_2_findings",
        "mean_auc_all_outputs",
        "auc/Mass",
        "auc/Effusion",
        "auc/No Finding",
        "images_per_s",
    ):
        assert metrics[column].notna().all(), column
    assert any((out / "tensorboard").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    # the default monitor (mean_auc_14_findings) on these labels is their findings' mean
    findings = metrics[["auc/Mass", "auc/Effusion"]].mean(axis=1)
    assert metrics["mean_auc_2_findings"].to_numpy() == pytest.approx(findings.to_numpy())
    assert summary["best_epoch"] == int(metrics["mean_auc_2_findings"].idxmax()) + 1
    assert summary["best_metrics"]["mean_auc_2_findings"] == pytest.approx(
        metrics["mean_auc_2_findings"].max()
    )
    assert TrainConfig.from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text())).epochs == 6
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    resume_state = torch.load(out / "last.state.pt", weights_only=True)
    assert "optimizer" in resume_state and resume_state["epoch"] == 6
    assert "optimizer" not in torch.load(out / "last.pt", weights_only=True)  # servable file stays clean


def test_best_checkpoint_serves_alone_and_reproduces_its_validation_auc(learned_run):
    ckpt = load_checkpoint(learned_run.best_checkpoint)
    assert ckpt.label_names == ["Mass", "Effusion", "No Finding"]
    assert ckpt.preprocess.size == 48 and ckpt.model.num_classes == 3 and ckpt.model.backbone == "vgg_like"
    assert set(ckpt.thresholds) == set(ckpt.label_names) and all(
        0 <= t <= 1 for t in ckpt.thresholds.values()
    )
    assert ckpt.train_config["data"]["task"] == "multilabel" and len(ckpt.data_fingerprint) == 16
    assert ckpt.metrics["mean_auc_2_findings"] == pytest.approx(
        learned_run.best_metrics["mean_auc_2_findings"]
    )
    val = pd.read_csv(learned_run.output / "val_predictions.csv")
    images = UInt8Dataset(
        _subset_by_paths(val["path"].tolist(), learned_run.label_names, ckpt), ckpt.preprocess
    )
    batch = np.stack([images.image(i) for i in range(len(images))])
    probs = TorchPredictor(ckpt).predict_proba(batch)
    assert np.allclose(probs, val[[f"prob_{n}" for n in ckpt.label_names]].to_numpy(), atol=1e-4)
    assert label_auc(val["Mass"].to_numpy(), probs[:, 0]) == pytest.approx(ckpt.metrics["auc/Mass"], abs=1e-6)


def _subset_by_paths(paths, labels, ckpt):
    """The validation images as a dataset, straight from the run's val_predictions.csv."""
    csv = ckpt.train_config["data"]["options"]["csv"]
    dataset = CSVDataset(csv, labels=labels)
    order = {p: i for i, p in enumerate(dataset.paths)}
    return dataset.subset([order[p] for p in paths])


def test_resume_after_interruption_continues_where_it_stopped(small_data, tmp_path, monkeypatch):
    config = TrainConfig.from_dict(tiny_config(small_data, epochs=3, max_steps_per_epoch=2, batch_size=4))
    [straight] = run_training(config, tmp_path / "straight")

    original = Trainer._train_epoch

    def crash_in_epoch_2(self, epoch, loader):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch, loader)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, tmp_path / "resumed")
    assert len(pd.read_csv(tmp_path / "resumed" / "metrics.csv")) == 1
    with pytest.raises(Exception, match="--resume"):
        run_training(config, tmp_path / "resumed")  # never silently overwrites a run
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    [resumed] = run_training(config, tmp_path / "resumed", resume=True)

    rows = pd.read_csv(tmp_path / "resumed" / "metrics.csv")
    assert rows["epoch"].tolist() == [1, 2, 3] and resumed.epochs_run == 3
    expected = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    assert np.allclose(rows["train_loss"], expected["train_loss"], atol=1e-5)  # as if never interrupted
    assert np.allclose(rows["val_loss"], expected["val_loss"], atol=1e-5)
    assert straight.best_epoch == resumed.best_epoch


def test_resume_of_a_finished_run_can_extend_it(small_data, tmp_path):
    config = TrainConfig.from_dict(tiny_config(small_data, epochs=1))
    run_training(config, tmp_path / "run")
    longer = TrainConfig.from_dict(tiny_config(small_data, epochs=2))
    [result] = run_training(longer, tmp_path / "run", resume=True)
    assert result.epochs_run == 2 and pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [
        1,
        2,
    ]


OPTION_SETS = {
    "weighted_bce-weighted-adamw-cosine-resnet": {
        "loss": {"name": "weighted_bce"}, "sampler": {"name": "weighted"}, "optim": {"name": "adamw", "weight_decay": 1e-4},
        "scheduler": {"name": "cosine", "warmup_epochs": 0.5}, "grad_clip": 1.0,
        "model": {"backbone": "resnet18", "width": 0.25},
    },
    "wcel-oversample-sgd-step-densenet-channels_last": {
        "loss": {"name": "wcel"}, "sampler": {"name": "oversample"}, "optim": {"name": "sgd", "nesterov": True},
        "scheduler": {"name": "step", "step_size": 1}, "model": {"backbone": "densenet121", "width": 0.125},
        "channels_last": True, "epochs": 2,
    },
    "wcel_per_class-undersample-exponential-efficientnet-bf16": {
        "loss": {"name": "wcel", "wcel_per_class": True}, "sampler": {"name": "undersample"},
        "scheduler": {"name": "exponential", "gamma": 0.5}, "model": {"backbone": "efficientnet-b0"},
        "amp": "bf16", "batch_size": 4,
    },
    "focal-seresnet": {
        "loss": {"name": "focal", "focal_alpha": 0.25}, "model": {"backbone": "seresnet50"}, "batch_size": 4,
    },
    "asymmetric-crop-abnormal-plateau-early_stop_on_loss": {
        "loss": {"name": "asymmetric"}, "augment": {"crop": 1.0, "contrast": 0.2, "brightness": 0.1},
        "data": {"task": "abnormal"}, "scheduler": {"name": "plateau", "patience": 0},
        "early_stopping": {"metric": "val_loss", "patience": 1}, "epochs": 3,
    },
    "add_abnormal-auc_metric-dropout": {
        "data": {"add_abnormal": True}, "early_stopping": {"metric": "auc/Mass"}, "model": {"dropout": 0.2},
    },
}  # fmt: skip


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_every_option_runs(name, small_data, tmp_path):
    config = TrainConfig.from_dict(tiny_config(small_data, **OPTION_SETS[name]))
    [result] = run_training(config, tmp_path / "run")
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt.model.backbone == config.model.backbone
    assert np.isfinite(result.history[0]["train_loss"])
    assert 1 <= result.epochs_run <= config.epochs
    if config.data.task == "abnormal":
        assert ckpt.label_names == ["Abnormal"]
    if config.data.add_abnormal:
        assert ckpt.label_names[-1] == "Abnormal" and ckpt.abnormal == {"label": "Abnormal", "invert": False}
    if config.scheduler.name == "step":
        assert result.history[1]["lr"] == pytest.approx(result.history[0]["lr"] * 0.1)


def test_binary_relevance_trains_one_network_per_label(small_data, tmp_path):
    config = TrainConfig.from_dict(
        tiny_config(small_data, data={"task": "binary_relevance", "labels": ["Mass", "Effusion"]})
    )
    results = run_training(config, tmp_path / "run")
    assert [r.label_names for r in results] == [["Mass"], ["Effusion"]]
    assert load_checkpoint(tmp_path / "run" / "effusion" / "best.pt").label_names == ["Effusion"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary["networks"]) == {"Mass", "Effusion"}


def test_freeze_backbone_trains_only_the_head_of_a_checkpoint(learned_run, learn_data, tmp_path):
    base = load_checkpoint(learned_run.best_checkpoint)
    config = TrainConfig.from_dict(
        tiny_config(
            learn_data,
            data={"options": {"csv": str(learn_data), "labels": ["Mass", "Nodule"]}},
            preprocess={"size": 48},
            init={"checkpoint": str(learned_run.best_checkpoint), "mode": "freeze_backbone"},
            epochs=1,
            max_steps_per_epoch=3,
        )
    )
    [result] = run_training(config, tmp_path / "frozen")
    tuned = load_checkpoint(result.best_checkpoint)
    head_name, _ = head_module(tuned.build_model())
    for key, value in tuned.state_dict.items():
        if not key.startswith(head_name):
            assert torch.equal(value, base.state_dict[key]), key  # weights and batch-norm statistics
    assert not torch.equal(
        tuned.state_dict[f"{head_name}.weight"][0], base.state_dict[f"{head_name}.weight"][0]
    )


def test_fine_tune_reuses_head_rows_of_shared_labels(learned_run, learn_data, tmp_path):
    config = TrainConfig.from_dict(
        tiny_config(
            learn_data,
            data={"options": {"csv": str(learn_data), "labels": ["Nodule", "Mass"]}},
            preprocess={"size": 48},
            init={"checkpoint": str(learned_run.best_checkpoint)},
            optim={"lr": 1e-9},
        )
    )
    [result] = run_training(config, tmp_path / "tuned")
    base, tuned = load_checkpoint(learned_run.best_checkpoint), load_checkpoint(result.best_checkpoint)
    head_name, _ = head_module(tuned.build_model())
    assert torch.allclose(
        tuned.state_dict[f"{head_name}.weight"][1], base.state_dict[f"{head_name}.weight"][0], atol=1e-6
    )


def test_training_from_the_uint8_cache_matches_decoding(small_data, tmp_path):
    preload = TrainConfig.from_dict(tiny_config(small_data, epochs=2, max_steps_per_epoch=2, batch_size=4))
    cached = TrainConfig.from_dict(
        tiny_config(
            small_data, epochs=2, max_steps_per_epoch=2, batch_size=4, data={"cache": str(tmp_path / "cache")}
        )
    )
    [a] = run_training(preload, tmp_path / "preload")
    [b] = run_training(cached, tmp_path / "cached")
    assert list((tmp_path / "cache").glob("*/pixels.u8"))  # the cache was built on the way
    assert [r["train_loss"] for r in a.history] == pytest.approx(
        [r["train_loss"] for r in b.history], abs=1e-6
    )


def test_an_unreadable_image_is_skipped_not_fatal(tmp_path, caplog):
    csv = make_data(tmp_path / "data", n_images=16, size=32, n_patients=8, seed=9)
    bad = sorted((tmp_path / "data" / "images").glob("*.png"))[3]
    bad.write_bytes(b"not a png")
    [result] = run_training(TrainConfig.from_dict(tiny_config(csv)), tmp_path / "run")
    ckpt = load_checkpoint(result.best_checkpoint)
    assert ckpt.metrics["n_train"] + ckpt.metrics["n_val"] == 15
    assert bad.name in caplog.text


def test_nih_training_through_the_registry_and_cache(shared_data, tmp_path):
    nih = shared_data / "nih"
    config = TrainConfig.from_dict(
        tiny_config(
            nih,
            data={
                "kind": "nih",
                "options": {"root": str(nih), "images": [str(nih / "images-64")]},
                "add_abnormal": True,
                "cache": str(tmp_path / "cache"),
            },
            batch_size=16,
        )
    )
    [result] = run_training(config, tmp_path / "run")
    ckpt = load_checkpoint(result.best_checkpoint)
    assert len(ckpt.label_names) == 16 and ckpt.label_names[-2:] == ["No Finding", "Abnormal"]
    assert ckpt.model.num_classes == 16 and ckpt.model.in_channels == 1
    val = pd.read_csv(result.output / "val_predictions.csv")
    train_patients = _train_patients(config, val)
    assert not train_patients & set(val["patient_id"].astype(str))  # patient-grouped split


def _train_patients(config, val):
    from xraytriage.train.data import load_source

    dataset = load_source(config.data.kind, config.data.options)
    patients = dict(zip(dataset.paths, dataset.patient_ids, strict=True))
    val_paths = set(val["path"])
    return {patients[p] for p in dataset.paths if p not in val_paths}
