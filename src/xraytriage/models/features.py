"""The network's own pooled features next to its logits, for the out-of-distribution score.

Every backbone here ends in a linear classifier on globally pooled features (ResNet ``fc``,
DenseNet ``class_layers.out``, EfficientNet ``_fc``, the VGG-like ``fc``; with dropout in
front in training only). The input of that last ``nn.Linear`` is the penultimate feature
vector; :class:`WithFeatures` returns it beside the logits, for the torch backend and inside
the exported ONNX graph alike (a forward hook, so no backbone needs its own code).
"""

from __future__ import annotations

import torch
from torch import nn

from xraytriage.errors import ConfigError


def classifier_layer(network: nn.Module) -> nn.Linear:
    """The network's last ``nn.Linear`` (its classifier on pooled features)."""
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(network).__name__} has no linear classifier to take features from")
    return linears[-1]


class WithFeatures(nn.Module):
    """``network(x) -> (logits, features)``: features = the classifier's input, flattened."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.head = classifier_layer(network)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        try:
            logits = self.network(x)
        finally:
            handle.remove()
        return logits, torch.flatten(seen[-1], 1)
