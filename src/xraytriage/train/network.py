"""The network of a run: built from the config, optionally started from a checkpoint (all
weights, or the backbone plus the head rows of shared labels), optionally with a frozen backbone."""

from __future__ import annotations

import logging

import torch
from torch import nn

from xraytriage.errors import ConfigError
from xraytriage.models.checkpoint import load_checkpoint
from xraytriage.models.factory import ModelConfig, build_model
from xraytriage.preprocess import PreprocessContract
from xraytriage.train.config import TrainConfig

log = logging.getLogger(__name__)


def head_module(net: nn.Module) -> tuple[str, nn.Linear]:
    """The classification layer: the network's last ``nn.Linear`` (true for every backbone here)."""
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ConfigError(f"{type(net).__name__}: no linear classification layer found")
    return last


def init_from_checkpoint(
    net: nn.Module,
    model_cfg: ModelConfig,
    label_names: list[str],
    path: str,
    contract: PreprocessContract | None = None,
) -> str:
    """Load a checkpoint's weights into ``net``. Same labels: everything. Other labels: the
    backbone, plus the head rows of the labels both share; the rest of the head starts fresh."""
    ckpt = load_checkpoint(path)
    if contract is not None and ckpt.preprocess.to_dict() != contract.to_dict():
        log.warning(
            "init.checkpoint %s was trained with preprocessing %s; this run uses %s (set preprocess to match "
            "unless the change is intended)",
            path,
            ckpt.preprocess.to_dict(),
            contract.to_dict(),
        )
    theirs = ckpt.model
    for key in ("backbone", "in_channels", "width"):
        if getattr(theirs, key) != getattr(model_cfg, key):
            raise ConfigError(
                f"init.checkpoint {path}: model.{key} is {getattr(theirs, key)!r} there but "
                f"{getattr(model_cfg, key)!r} in this config"
            )
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    if list(ckpt.label_names) == list(label_names):
        net.load_state_dict(state)
        return f"all weights from {path}"
    head_name, head = head_module(net)
    prefix = f"{head_name}."
    body = {k: v for k, v in state.items() if not k.startswith(prefix)}
    missing, unexpected = net.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise ConfigError(
            f"init.checkpoint {path}: weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    shared = [n for n in label_names if n in ckpt.label_names]
    with torch.no_grad():
        for name in shared:
            i, j = ckpt.label_names.index(name), label_names.index(name)
            head.weight[j] = state[f"{prefix}weight"][i]
            if head.bias is not None and f"{prefix}bias" in state:
                head.bias[j] = state[f"{prefix}bias"][i]
    return f"backbone from {path}; head rows reused for {len(shared)} of {len(label_names)} labels"


def freeze_backbone(net: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the head; returns the parameters left to train."""
    _, head = head_module(net)
    head_params = {id(p) for p in head.parameters()}
    for p in net.parameters():
        p.requires_grad_(id(p) in head_params)
    return [p for p in net.parameters() if p.requires_grad]


def keep_frozen_norms_in_eval(net: nn.Module) -> None:
    """Batch-norm layers whose weights are frozen also keep their running statistics."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def build_network(
    config: TrainConfig,
    model_cfg: ModelConfig,
    label_names: list[str],
    device: torch.device,
    channels_last: bool | None = None,
) -> tuple[nn.Module, list[nn.Parameter], str]:
    """(network on ``device``, the parameters to train, a note on how it was initialised)."""
    net = build_model(model_cfg)
    note = "random initialisation"
    if config.init.checkpoint:
        note = init_from_checkpoint(net, model_cfg, label_names, config.init.checkpoint, config.preprocess)
    params = [p for p in net.parameters() if p.requires_grad]
    if config.init.mode == "freeze_backbone":
        params = freeze_backbone(net)
        note += "; backbone frozen, training the head only"
    net = net.to(device)
    if config.channels_last if channels_last is None else channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, params, note
