"""Import externally trained DenseNet-121 weights (torchvision layout) as a servable checkpoint.

CheXNet reproductions and torchxrayvision publish DenseNet-121 state dicts in torchvision's
layout; MONAI's DenseNet-121 is the same network with other key names. The mapping:

    [module.][densenet121.|model.]features.denseblockB.denselayerL.norm1.*  (or old "norm.1.*")
        -> features.denseblockB.denselayerL.layers.norm1.*
    features.{conv0,norm0,transitionT.*,norm5}.*  -> unchanged
    classifier.weight / classifier.0.weight (Linear, optionally followed by Sigmoid)
        -> class_layers.out.weight

A user also states what the weights expect, because a state dict does not say: the label
order, channels and input normalisation. Presets cover the two common publishers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from xraytriage.errors import ConfigError, MissingFileError, XRayTriageError
from xraytriage.labels import canonical_label
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.models.factory import ModelConfig, build_model
from xraytriage.models.weight_presets import PRESETS, WeightsPreset  # noqa: F401 - re-exported
from xraytriage.preprocess import PreprocessContract

_PREFIXES = ("module.", "densenet121.", "model.", "backbone.")
_OLD_STYLE = re.compile(r"\.(norm|relu|conv)\.([12])\.")
_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(norm1|conv1|norm2|conv2)\.")
_CLASSIFIER = re.compile(r"^classifier\.(?:0\.)?(weight|bias)$")


def map_torchvision_densenet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision-layout DenseNet state dict to MONAI's DenseNet layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    changed = True
        name = _OLD_STYLE.sub(lambda m: f".{m.group(1)}{m.group(2)}.", name)
        if name == "op_threshs":  # torchxrayvision's per-label thresholds: not a weight
            continue
        classifier = _CLASSIFIER.match(name)
        if classifier:
            out[f"class_layers.out.{classifier.group(1)}"] = value
            continue
        name = _LAYER.sub(lambda m: f"{m.group(1)}.layers.{m.group(2)}.", name)
        out[name] = value
    return out


def _extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, (Mapping, torch.nn.Module)):
                return _extract_state_dict(inner, source)
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise XRayTriageError(f"{source}: no state dict found (expected a dict of tensors)")


def import_densenet121(
    state: Mapping[str, Any],
    labels: Sequence[str],
    channels: int,
    size: int,
    mean: float | tuple[float, ...],
    std: float | tuple[float, ...],
    name: str = "imported-densenet121",
    thresholds: Mapping[str, float] | None = None,
) -> Checkpoint:
    """Checkpoint from a torchvision-layout DenseNet-121 state dict; checks every key matches."""
    mapped = map_torchvision_densenet_keys(_extract_state_dict(state, name))
    labels = [canonical_label(x) for x in labels]
    head = mapped.get("class_layers.out.weight")
    if head is None:
        raise XRayTriageError(f"{name}: no classifier weights (classifier.weight) in the state dict")
    if head.shape[0] != len(labels):
        raise ConfigError(
            f"{name}: classifier has {head.shape[0]} outputs but {len(labels)} labels were given"
        )
    conv0 = mapped.get("features.conv0.weight")
    if conv0 is not None and conv0.shape[1] != channels:
        raise ConfigError(f"{name}: first convolution takes {conv0.shape[1]} channels, not {channels}")
    cfg = ModelConfig(backbone="densenet121", num_classes=len(labels), in_channels=channels)
    expected = build_model(cfg).state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    # num_batches_tracked is absent from old checkpoints and unused in eval mode
    missing_real = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing_real or unexpected:
        raise XRayTriageError(
            f"{name}: not a DenseNet-121 state dict in torchvision layout "
            f"(missing {missing_real[:3]}{'...' if len(missing_real) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key in missing:
        mapped[key] = expected[key]
    for key, value in mapped.items():
        if value.shape != expected[key].shape:
            raise XRayTriageError(
                f"{name}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )
    contract = PreprocessContract(size=size, channels=channels, mean=mean, std=std, intensity="none")
    return Checkpoint(
        model=cfg,
        label_names=labels,
        preprocess=contract,
        state_dict={k: v.detach().float() if v.is_floating_point() else v for k, v in mapped.items()},
        thresholds=dict(thresholds or {}),
        name=name,
        train_config={"imported_from": name},
    )


def load_external_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict file (.pt/.pth/.pth.tar). Tries safe loading first."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise XRayTriageError(
            f"{path}: cannot load safely as a state dict ({exc.__class__.__name__}); "
            "save it with torch.save(model.state_dict()) first"
        ) from None
    return _extract_state_dict(obj, str(path))
