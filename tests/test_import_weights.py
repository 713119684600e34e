"""Importing torchvision-layout DenseNet-121 weights (CheXNet reproductions, torchxrayvision)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from xraytriage.cli.main import main
from xraytriage.errors import ConfigError, XRayTriageError
from xraytriage.labels import NIH_FINDINGS
from xraytriage.models import ModelConfig, build_model, load_checkpoint
from xraytriage.models.import_weights import PRESETS, import_densenet121, map_torchvision_densenet_keys


def _torchvision_layout(
    monai_state: dict[str, torch.Tensor], old_style: bool = False, prefix: str = ""
) -> dict:
    """Write a MONAI DenseNet state dict the way torchvision (or an old CheXNet repo) names it."""
    out = {}
    for key, value in monai_state.items():
        name = key.replace(".layers.", ".")
        if name.startswith("class_layers.out."):
            name = name.replace("class_layers.out.", "classifier.0." if old_style else "classifier.")
        if old_style:
            name = re.sub(r"\.(norm|conv)([12])\.", r".\1.\2.", name)
            if name.endswith("num_batches_tracked"):
                continue  # absent from pre-0.4 torch checkpoints
        out[prefix + name] = value.clone()
    return out


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(3)
    net = build_model(ModelConfig(backbone="densenet121", num_classes=14, in_channels=3)).eval()
    with torch.no_grad():  # non-trivial running statistics so a wrong BN mapping shows
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_key_mapping_covers_every_layer(reference):
    mapped = map_torchvision_densenet_keys(_torchvision_layout(reference.state_dict()))
    assert set(mapped) == set(reference.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize(("old_style", "prefix"), [(False, ""), (True, "module.densenet121.")])
def test_imported_model_computes_what_the_original_did(reference, old_style, prefix):
    state = _torchvision_layout(reference.state_dict(), old_style=old_style, prefix=prefix)
    preset = PRESETS["chexnet"]
    ckpt = import_densenet121(
        state, labels=NIH_FINDINGS, channels=3, size=64, mean=preset.mean, std=preset.std, name="chexnet-test"
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        got = ckpt.build_model()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert ckpt.label_names[0] == "Atelectasis" and ckpt.label_names[12] == "Pleural Thickening"


def test_normalisation_contract_of_presets():
    chexnet = PRESETS["chexnet"]
    ckpt_contract = import_densenet121(
        _torchvision_layout(build_model(ModelConfig("densenet121", 14, 3)).state_dict()),
        labels=NIH_FINDINGS,
        channels=3,
        size=224,
        mean=chexnet.mean,
        std=chexnet.std,
    ).preprocess
    pixel = np.full((1, 4, 4), 200, np.uint8)
    x = ckpt_contract.normalize(pixel)
    assert x.shape == (1, 3, 4, 4)
    expected = (200 / 255 - np.array(chexnet.mean)) / np.array(chexnet.std)
    np.testing.assert_allclose(x[0, :, 0, 0], expected, rtol=1e-6)
    xrv = PRESETS["torchxrayvision"]
    from xraytriage.preprocess import PreprocessContract

    contract = PreprocessContract(channels=1, mean=xrv.mean, std=xrv.std)
    ends = contract.normalize(np.array([[[0, 255]]], np.uint8))
    np.testing.assert_allclose(ends[0, 0, 0], [-1024.0, 1024.0], rtol=1e-6)


def test_wrong_label_count_and_wrong_network_are_clear_errors(reference):
    state = _torchvision_layout(reference.state_dict())
    with pytest.raises(ConfigError, match="14 outputs but 3 labels"):
        import_densenet121(state, labels=["A", "B", "C"], channels=3, size=224, mean=0.5, std=0.25)
    with pytest.raises(ConfigError, match="3 channels, not 1"):
        import_densenet121(state, labels=NIH_FINDINGS, channels=1, size=224, mean=0.5, std=0.25)
    resnet = {"conv1.weight": torch.zeros(1), "classifier.weight": torch.zeros(14, 8)}
    with pytest.raises(XRayTriageError, match="not a DenseNet-121"):
        import_densenet121(resnet, labels=NIH_FINDINGS, channels=3, size=224, mean=0.5, std=0.25)


def test_cli_writes_a_servable_checkpoint(reference, tmp_path):
    weights = tmp_path / "chexnet.pth.tar"
    torch.save({"state_dict": _torchvision_layout(reference.state_dict(), prefix="module.")}, weights)
    out = tmp_path / "imported.pt"
    assert main(["import-weights", str(weights), "--preset", "chexnet", "--output", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.model.in_channels == 3 and ckpt.preprocess.size == 224
    assert ckpt.label_names == list(NIH_FINDINGS)
    assert main(["import-weights", str(weights), "--output", str(tmp_path / "x.pt")]) == 2  # no labels given
