"""Grad-CAM and Grad-CAM++ computed for several classes from one forward pass.

Why not ``monai.visualize.GradCAM`` / ``GradCAMpp`` directly: their ``__call__`` always runs a
new forward pass, ``class_idx`` is one class for the whole batch, and the backward goes through
the whole network (a full backward hook on the target layer, gradients for every parameter).
Explaining k findings of one image that way costs k forward and k full backward passes.

Here the forward pass runs once. A forward hook on the target layer swaps its output for a
detached copy that requires grad (the backbone below it builds no autograd graph at all, like
inference), and each class's gradient is ``torch.autograd.grad(logit_c, activation,
retain_graph=True)``: a backward pass through the *head only* (pooling + classifier), which is
almost free. The maps are the same numbers MONAI computes (the tests compare against
``monai.visualize.GradCAM`` / ``GradCAMpp`` class by class).

- Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of dY_c/dA; map = ReLU(sum_k w_k A_k).
- Grad-CAM++ (Chattopadhyay et al. 2018), with the exponential-score closed form MONAI uses:
  alpha = g^2 / (2 g^2 + sum_ij A g^3); weights = sum_ij alpha * ReLU(g). MONAI multiplies g by
  exp(Y_c) inside the ReLU; that is one positive factor per map and cancels when the map is
  normalised to [0, 1], so it is left out (it overflows for large logits).

Not thread-safe per instance (the hook stores the activation); use one per thread, or the lock
that :class:`xraytriage.explain.Explainer` holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xraytriage.errors import ConfigError
from xraytriage.explain.layers import module_by_name

CAMMethod = Literal["gradcam", "gradcam++"]
METHODS: tuple[str, ...] = ("gradcam", "gradcam++")


def check_method(method: str) -> str:
    key = method.lower().replace("_", "").replace("pp", "++").replace("gradcamplusplus", "gradcam++")
    if key not in METHODS:
        raise ConfigError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
    return key


@dataclass
class CAMPass:
    """The result of one forward pass: logits, and per-class maps on demand (one head backward each)."""

    logits: torch.Tensor  # (N, L), graph attached to ``activation``
    activation: torch.Tensor  # (N, C, h, w) leaf tensor that requires grad
    method: str

    def maps(self, class_index: int) -> torch.Tensor:
        """(N, h, w) non-negative map of class ``class_index`` for every image of the batch."""
        if not 0 <= class_index < self.logits.shape[1]:
            raise ConfigError(f"class index {class_index} out of range 0..{self.logits.shape[1] - 1}")
        # The images of a batch are independent in eval mode, so the gradient of the summed
        # logit gives each image its own gradient.
        (grad,) = torch.autograd.grad(self.logits[:, class_index].sum(), self.activation, retain_graph=True)
        acti = self.activation.detach()
        if self.method == "gradcam":
            weights = grad.mean(dim=(2, 3), keepdim=True)
        else:
            grad2, grad3 = grad.pow(2), grad.pow(3)
            denom = 2 * grad2 + (acti * grad3).sum(dim=(2, 3), keepdim=True)
            denom = torch.where(denom != 0.0, denom, torch.ones_like(denom))
            alpha = grad2 / (denom + 1e-7)
            weights = (alpha * F.relu(grad)).sum(dim=(2, 3), keepdim=True)
        return F.relu((weights * acti).sum(dim=1)).detach()

    def maps_for(self, class_indices: Sequence[int]) -> torch.Tensor:
        """(N, k, h, w): one head backward per class, the forward pass shared."""
        if not class_indices:
            n, _, h, w = self.activation.shape
            return torch.zeros(n, 0, h, w)
        return torch.stack([self.maps(int(c)) for c in class_indices], dim=1)


class GradCAM:
    """Grad-CAM family on ``model`` at ``layer``; the model is switched to eval mode and frozen.

    ``model`` should be a private copy (``Checkpoint.build_model()`` gives one): its parameters
    stop requiring grad, and in-place activations right after the layer are made safe by
    handing them a copy of the hooked output.
    """

    def __init__(self, model: nn.Module, layer: str, method: str = "gradcam") -> None:
        self.model = model.eval()
        self.layer = layer
        self.method = check_method(method)
        for param in self.model.parameters():
            param.requires_grad_(False)
        self._captured: torch.Tensor | None = None
        self._hook = module_by_name(self.model, layer).register_forward_hook(self._capture)

    def _capture(self, _module, _inputs, output):
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ConfigError(f"CAM layer {self.layer!r} must output a (N, C, H, W) map")
        leaf = output.detach().requires_grad_(True)
        self._captured = leaf
        # A copy goes on, so an in-place op after the layer cannot modify the leaf.
        return leaf.clone()

    def forward(self, x: torch.Tensor) -> CAMPass:
        """One forward pass of the (normalised) batch ``x``; take maps from the returned pass."""
        self._captured = None
        with torch.enable_grad():
            logits = self.model(x)
        if self._captured is None:
            raise ConfigError(f"CAM layer {self.layer!r} was not reached in the forward pass")
        activation, self._captured = self._captured, None
        return CAMPass(logits=logits, activation=activation, method=self.method)

    def __call__(self, x: torch.Tensor, class_indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, L), maps (N, k, h, w)) for the classes ``class_indices``."""
        cam_pass = self.forward(x)
        return cam_pass.logits.detach(), cam_pass.maps_for(class_indices)

    def remove(self) -> None:
        """Detach the hook (the model is usable for plain inference again)."""
        self._hook.remove()
