"""Import externally trained DenseNet-121 / ResNet-50 weights (torchvision layout) as a servable
checkpoint.

CheXNet reproductions and torchxrayvision publish DenseNet-121 state dicts in torchvision's
layout; MONAI's DenseNet-121 is the same network with other key names. The mapping:

    [module.][densenet121.|model.]features.denseblockB.denselayerL.norm1.*  (or old "norm.1.*")
        -> features.denseblockB.denselayerL.layers.norm1.*
    features.{conv0,norm0,transitionT.*,norm5}.*  -> unchanged
    classifier.weight / classifier.0.weight (Linear, optionally followed by Sigmoid)
        -> class_layers.out.weight

torchvision's ResNet-50 and MONAI's share their key names; MONAI's downsample convolution has
a bias that torchvision's lacks, which is set to zero (the same function). Width (channels
of the first convolution) is read from the weights, so narrow variants convert too.

A user also states what the weights expect, because a state dict does not say: the label
order, channels and input normalisation. Presets cover the two common publishers; the
registry of published models (:mod:`xraytriage.models.published`) states it per model and
:func:`import_published` converts with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xraytriage.errors import ConfigError, XRayTriageError
from xraytriage.labels import canonical_label
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.models.factory import ModelConfig, build_model
from xraytriage.models.registry import OPERATING_POINTS
from xraytriage.models.weight_presets import PRESETS, WeightsPreset  # noqa: F401 - re-exported
from xraytriage.preprocess import PreprocessContract

if TYPE_CHECKING:
    from xraytriage.models.registry import PublishedModel

_PREFIXES = ("module.", "densenet121.", "model.", "backbone.")
_OLD_STYLE = re.compile(r"\.(norm|relu|conv)\.([12])\.")
_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(norm1|conv1|norm2|conv2)\.")
_CLASSIFIER = re.compile(r"^classifier\.(?:0\.)?(weight|bias)$")


def _strip_prefixes(key: str) -> str:
    """A state-dict key without its wrapper prefixes (``module.``, ``model.``...), however nested."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def map_torchvision_densenet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision-layout DenseNet state dict to MONAI's DenseNet layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = _strip_prefixes(key)
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


def map_torchvision_resnet_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``module.``, ``model.``) from a torchvision ResNet state dict:
    MONAI's ResNet uses torchvision's key names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = _strip_prefixes(key)
        if name != "op_threshs":
            out[name] = value
    return out


def _width(first_conv: torch.Tensor | None, base: int, name: str, arch: str) -> float:
    if first_conv is None or first_conv.ndim != 4:
        raise XRayTriageError(f"{name}: not a {arch} state dict in torchvision layout (no first convolution)")
    return first_conv.shape[0] / base


def _complete_state(
    mapped: dict[str, torch.Tensor], cfg: ModelConfig, name: str, arch: str
) -> dict[str, torch.Tensor]:
    """Every key of the MONAI network present with its shape, or an error naming what is wrong.
    Absent ``num_batches_tracked`` (old files) and downsample biases (torchvision has none)
    are filled: neither changes the function in eval mode."""
    expected = build_model(cfg).state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    fillable = [k for k in missing if k.endswith("num_batches_tracked") or k.endswith("downsample.0.bias")]
    missing_real = [k for k in missing if k not in fillable]
    if missing_real or unexpected:
        raise XRayTriageError(
            f"{name}: not a {arch} state dict in torchvision layout "
            f"(missing {missing_real[:3]}{'...' if len(missing_real) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for key in fillable:
        mapped[key] = torch.zeros_like(expected[key])
    for key, value in mapped.items():
        if value.shape != expected[key].shape:
            raise XRayTriageError(
                f"{name}: {key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)} "
                f"for {arch} at width {cfg.width:g}"
            )
    return {k: v.detach().float() if v.is_floating_point() else v for k, v in mapped.items()}


def convert_torchvision_state(
    state: Mapping[str, Any], arch: str, name: str
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A torchvision-layout ``densenet121`` / ``resnet50`` state dict as (MONAI config, state)."""
    state = _extract_state_dict(state, name)
    if arch == "densenet121":
        mapped = map_torchvision_densenet_keys(state)
        head, first = mapped.get("class_layers.out.weight"), mapped.get("features.conv0.weight")
        width = _width(first, 64, name, arch)
    elif arch == "resnet50":
        mapped = map_torchvision_resnet_keys(state)
        head, first = mapped.get("fc.weight"), mapped.get("conv1.weight")
        width = _width(first, 64, name, arch)
    else:
        raise ConfigError(f"{name}: cannot convert architecture {arch!r} (densenet121 or resnet50)")
    if head is None:
        raise XRayTriageError(
            f"{name}: no classifier weights (classifier.weight / fc.weight) in the state dict"
        )
    cfg = ModelConfig(
        backbone=arch, num_classes=int(head.shape[0]), in_channels=int(first.shape[1]), width=width
    )
    return cfg, _complete_state(mapped, cfg, name, arch)


def import_densenet121(
    state: Mapping[str, Any],
    labels: Sequence[str],
    channels: int,
    size: int,
    mean: float | tuple[float, ...],
    std: float | tuple[float, ...],
    name: str = "imported-densenet121",
    thresholds: Mapping[str, float] | None = None,
    geometry: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """Checkpoint from a torchvision-layout DenseNet-121 state dict; checks every key matches.
    ``geometry``: further contract fields (``resize``, ``resize_to``, ``resample``)."""
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
    width = conv0.shape[0] / 64 if conv0 is not None and conv0.ndim == 4 else 1.0
    cfg = ModelConfig(backbone="densenet121", num_classes=len(labels), in_channels=channels, width=width)
    contract = PreprocessContract(
        size=size, channels=channels, mean=mean, std=std, intensity="none", **dict(geometry or {})
    )
    return Checkpoint(
        model=cfg,
        label_names=labels,
        preprocess=contract,
        state_dict=_complete_state(mapped, cfg, name, "DenseNet-121"),
        thresholds=dict(thresholds or {}),
        name=name,
        train_config={"imported_from": name},
    )


def import_published(
    weights: Any, entry: PublishedModel, source: str = "", operating_point: str = "youden"
) -> Checkpoint:
    """Checkpoint from a published model's loaded weights and its registry entry.

    Outputs the publisher did not train or evaluate (empty label, or no published threshold
    where it publishes thresholds) are dropped from the classifier, so every output of the
    checkpoint is a valid finding that feeds P(abnormal); which source outputs were kept is
    recorded (``train_config["imported_from"]["valid_outputs"]``). The published
    ``operating_point`` (``youden``: the publisher's op_threshs, ``ppv80``: its ppv80_thres)
    becomes the checkpoint's thresholds on the (uncalibrated) sigmoid probability, converted
    from the publisher's ``threshold_space``; every published point is kept under
    ``imported_from["operating_points"]`` (label -> cut-off on the probability).
    """
    from xraytriage.models.safe_pickle import state_dict_of

    source = source or entry.name
    entry.check_operating_point(operating_point)
    points = entry.operating_points()
    cfg, state = convert_torchvision_state(state_dict_of(weights, source), entry.architecture, source)
    if cfg.num_classes != len(entry.labels):
        raise XRayTriageError(
            f"{source}: classifier has {cfg.num_classes} outputs but the registry lists "
            f"{len(entry.labels)} labels for {entry.name}"
        )
    if cfg.in_channels != entry.input.channels:
        raise XRayTriageError(
            f"{source}: first convolution takes {cfg.in_channels} channels, the registry says {entry.input.channels}"
        )
    valid = entry.valid_outputs
    head = "class_layers.out" if entry.architecture == "densenet121" else "fc"
    for part in ("weight", "bias"):
        state[f"{head}.{part}"] = state[f"{head}.{part}"][valid].clone()
    labels = [canonical_label(entry.labels[i]) for i in valid]
    cfg = ModelConfig(cfg.backbone, len(valid), cfg.in_channels, cfg.width, cfg.dropout)
    by_label = {
        name: {
            label: float(values[i]) for label, i in zip(labels, valid, strict=True) if values[i] is not None
        }
        for name, values in points.items()
    }
    thresholds = dict(by_label.get(operating_point, {}))
    # a finding without a value at this point keeps the default point's (never a silent 0.5)
    fallback = [label for label in by_label.get("youden", {}) if label not in thresholds]
    thresholds.update({label: by_label["youden"][label] for label in fallback})
    provenance = entry.provenance()
    provenance.update(
        operating_points=by_label,
        operating_point=operating_point if points else None,
        operating_point_meaning=OPERATING_POINTS[operating_point] if points else None,
        operating_point_fallback=fallback,
    )
    return Checkpoint(
        model=cfg,
        label_names=labels,
        preprocess=entry.input,
        state_dict=state,
        thresholds=thresholds,
        name=entry.name,
        train_config={"imported_from": provenance},
        metrics={"published": entry.reported},
    )


def load_external_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (.pt/.pth/.pth.tar): a state dict, a dict holding one, or a whole
    pickled network (rebuilt as data by the restricted unpickler, never by running its code)."""
    from xraytriage.models.safe_pickle import load_weights_file, state_dict_of

    return state_dict_of(load_weights_file(path), str(path))
