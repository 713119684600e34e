"""ONNX export: parity with PyTorch, self-describing metadata, one export per set of weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xraytriage.models import Checkpoint, ModelConfig, build_model
from xraytriage.models.inference import OnnxPredictor, TorchPredictor, make_predictor, onnx_cache_dir
from xraytriage.models.onnx_export import export_onnx, onnx_matches, read_onnx_metadata, state_hash
from xraytriage.models.parity import check_parity
from xraytriage.preprocess import PreprocessContract


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAYTRIAGE_CACHE", str(tmp_path / "cache"))


def _nih_batch(shared_data, contract: PreprocessContract, n: int = 6) -> np.ndarray:
    from xraytriage.io import read_radiograph

    paths = sorted((shared_data / "nih" / "images").glob("*.png"))[:n]
    return np.stack([contract.to_uint8(read_radiograph(p).pixels) for p in paths])


def _random_checkpoint(backbone: str, size: int, contract: PreprocessContract | None = None) -> Checkpoint:
    torch.manual_seed(1)
    contract = contract or PreprocessContract(size=size)
    labels = ["Atelectasis", "Effusion", "Pneumothorax", "No Finding"]
    cfg = ModelConfig(backbone=backbone, num_classes=len(labels), in_channels=contract.channels, width=0.25)
    net = build_model(cfg).eval()
    # non-trivial batch-norm statistics, so the folded graph really has to match
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return Checkpoint(
        model=cfg,
        label_names=labels,
        preprocess=contract,
        state_dict={k: v.clone() for k, v in net.state_dict().items()},
        calibration={
            "Effusion": {"method": "temperature", "t": 1.7},
            "Atelectasis": {"method": "platt", "a": 0.8, "b": -0.3},
        },
        thresholds={"Atelectasis": 0.4, "Effusion": 0.35, "Pneumothorax": 0.2},
        name="random-" + backbone,
    )


def test_tiny_model_onnx_matches_torch_on_real_images(tiny_checkpoint, shared_data, tmp_path):
    path = export_onnx(tiny_checkpoint, tmp_path / "tiny.onnx")
    batch = _nih_batch(shared_data, tiny_checkpoint.preprocess)
    torch_probs = TorchPredictor(tiny_checkpoint).predict_proba(batch)
    onnx_probs = OnnxPredictor(path, checkpoint=tiny_checkpoint, intra_op_threads=1).predict_proba(batch)
    assert np.abs(torch_probs - onnx_probs).max() < 1e-4
    assert check_parity(tiny_checkpoint, path)["probabilities"] < 1e-4


@pytest.mark.parametrize(
    ("backbone", "contract"),
    [
        ("densenet121", PreprocessContract(size=64)),
        (
            "vgg_like",
            PreprocessContract(size=64, channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        ),
    ],
    ids=["densenet121-grey", "imagenet-rgb"],
)
@pytest.mark.slow
def test_onnx_matches_torch_with_normalisation_in_the_graph(backbone, contract, shared_data, tmp_path):
    checkpoint = _random_checkpoint(backbone, 64, contract)
    path = export_onnx(checkpoint, tmp_path / "dn.onnx")
    batch = _nih_batch(shared_data, contract, n=3)
    onnx_predictor = OnnxPredictor(path, checkpoint=checkpoint, intra_op_threads=1)
    torch_logits = TorchPredictor(checkpoint).predict_logits(batch)
    onnx_logits = onnx_predictor.predict_logits(batch)
    assert np.abs(torch_logits).max() > 1e-3  # the comparison is not between two zero vectors
    assert np.abs(checkpoint.probabilities(torch_logits) - checkpoint.probabilities(onnx_logits)).max() < 1e-4
    # the batch axis is dynamic: one image and three give the same answer per image
    np.testing.assert_allclose(onnx_predictor.predict_logits(batch[:1]), onnx_logits[:1], atol=1e-4)


def test_onnx_file_is_self_describing(tmp_path):
    checkpoint = _random_checkpoint("vgg_like", 32)
    path = export_onnx(checkpoint, tmp_path / "m.onnx")
    meta = read_onnx_metadata(path)
    assert json.loads(meta["label_names"]) == checkpoint.label_names
    assert PreprocessContract.from_dict(json.loads(meta["preprocess"])) == checkpoint.preprocess
    assert meta["name"] == "random-vgg_like"
    assert meta["state_hash"] == state_hash(checkpoint)
    # the .onnx alone gives calibrated probabilities identical to the checkpoint's
    batch = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)
    alone = OnnxPredictor(path)
    assert alone.checkpoint.thresholds == checkpoint.thresholds
    np.testing.assert_allclose(
        alone.predict_proba(batch), TorchPredictor(checkpoint).predict_proba(batch), atol=1e-5
    )


def test_sibling_onnx_is_used_only_when_its_weights_match(tmp_path):
    checkpoint = _random_checkpoint("vgg_like", 32)
    ckpt_path = checkpoint.save(tmp_path / "model.pt")
    sibling = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert OnnxPredictor(ckpt_path).onnx_path == sibling
    # new weights under the same file name: the stale sibling is ignored, the cache is used
    changed = _random_checkpoint("vgg_like", 32)
    changed.state_dict = {k: v + 0.01 if v.is_floating_point() else v for k, v in changed.state_dict.items()}
    changed.save(ckpt_path)
    assert not onnx_matches(sibling, changed)
    predictor = make_predictor(ckpt_path, "onnx")
    assert predictor.onnx_path.parent == onnx_cache_dir()
    assert onnx_matches(predictor.onnx_path, changed)


def test_cache_exports_once_and_reuses(tmp_path):
    checkpoint = _random_checkpoint("vgg_like", 32)
    first = OnnxPredictor(checkpoint).onnx_path
    stamp = first.stat().st_mtime_ns
    second = OnnxPredictor(checkpoint).onnx_path
    assert first == second and second.stat().st_mtime_ns == stamp
    assert len(list(onnx_cache_dir().glob("*.onnx"))) == 1


def test_unknown_backend_is_rejected(tiny_checkpoint):
    from xraytriage.errors import ConfigError

    with pytest.raises(ConfigError, match="onnx, onnx-int8, torch"):
        make_predictor(tiny_checkpoint, "tensorrt")


def test_export_command_reports_parity(tiny_checkpoint_path, tmp_path, capsys):
    from xraytriage.cli.main import main

    out = tmp_path / "exported.onnx"
    assert main(["export", "--model", str(tiny_checkpoint_path), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "max abs difference" in printed
    diff = float(printed.split("max abs difference ")[1].split()[0])
    assert diff < 1e-4
