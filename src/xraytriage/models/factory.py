"""Build a classification network from a typed config.

All backbones come from MONAI (torchvision does not import with the CPU torch here), plus the
seed report's small "VGG-like" network trained from scratch. Every network maps
(N, in_channels, H, W) float -> (N, num_classes) logits, for any H, W >= 32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from xraytriage.errors import ConfigError


@dataclass
class ModelConfig:
    backbone: str = "densenet121"
    num_classes: int = 15
    in_channels: int = 1
    width: float = 1.0
    """Width multiplier (ResNet widen_factor, DenseNet growth/initial features, VGG channels)."""
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown model field(s): {', '.join(unknown)}")
        return cls(**data)


class VGGLike(nn.Module):
    """The seed report's VGG-like CNN: 3x3 conv pairs, batch norm, max-pool, global pooling head."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        chans = [max(8, int(c * width)) for c in (32, 64, 128, 256, 256)]
        layers: list[nn.Module] = []
        prev = in_channels
        for c in chans:
            layers += [
                nn.Conv2d(prev, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            prev = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def _densenet(depth: int) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        from monai.networks.nets import DenseNet121, DenseNet169, DenseNet201

        cls = {121: DenseNet121, 169: DenseNet169, 201: DenseNet201}[depth]
        return cls(
            spatial_dims=2,
            in_channels=cfg.in_channels,
            out_channels=cfg.num_classes,
            init_features=max(8, int(64 * cfg.width)),
            growth_rate=max(4, int(32 * cfg.width)),
            dropout_prob=cfg.dropout,
        )

    return build


def _resnet(depth: int) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        from monai.networks.nets import resnet

        factory = getattr(resnet, f"resnet{depth}")
        net = factory(
            spatial_dims=2,
            n_input_channels=cfg.in_channels,
            num_classes=cfg.num_classes,
            conv1_t_size=7,
            conv1_t_stride=2,
            widen_factor=cfg.width,
        )
        if cfg.dropout > 0:
            net.fc = nn.Sequential(nn.Dropout(cfg.dropout), net.fc)
        return net

    return build


def _efficientnet(variant: str) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        from monai.networks.nets import EfficientNetBN

        net = EfficientNetBN(
            f"efficientnet-{variant}",
            pretrained=False,
            spatial_dims=2,
            in_channels=cfg.in_channels,
            num_classes=cfg.num_classes,
        )
        return net

    return build


def _seresnet(depth: int) -> Callable[[ModelConfig], nn.Module]:
    def build(cfg: ModelConfig) -> nn.Module:
        from monai.networks.nets import SEResNet50, SEResNet101

        cls = {50: SEResNet50, 101: SEResNet101}[depth]
        return cls(
            spatial_dims=2,
            in_channels=cfg.in_channels,
            num_classes=cfg.num_classes,
            dropout_prob=cfg.dropout or None,
        )

    return build


BACKBONES: dict[str, Callable[[ModelConfig], nn.Module]] = {
    **{f"densenet{d}": _densenet(d) for d in (121, 169, 201)},
    **{f"resnet{d}": _resnet(d) for d in (10, 18, 34, 50)},
    **{f"efficientnet-b{i}": _efficientnet(f"b{i}") for i in range(8)},
    **{f"seresnet{d}": _seresnet(d) for d in (50, 101)},
    "vgg_like": lambda cfg: VGGLike(cfg.in_channels, cfg.num_classes, cfg.width, cfg.dropout),
}


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised network for ``cfg``; raises ConfigError naming the choices."""
    name = cfg.backbone.lower()
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {cfg.backbone!r}; choose one of: {', '.join(sorted(BACKBONES))}")
    if cfg.num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {cfg.num_classes}")
    if cfg.in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 or 3, got {cfg.in_channels}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    return BACKBONES[name](cfg)
