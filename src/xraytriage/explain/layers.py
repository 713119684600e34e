"""Which layer a class activation map is computed at, found automatically per backbone.

Grad-CAM needs the last layer that still has a spatial layout: deep enough to be class-specific,
before global pooling throws the layout away. For the networks :mod:`xraytriage.models` builds:

==================  ================================  ========================================
backbone            layer                             why
==================  ================================  ========================================
DenseNet (MONAI)    ``class_layers.relu``             ``features`` (ends at ``norm5``) + ReLU:
                                                      what the classifier pools
ResNet (MONAI)      ``layer4``                        last residual stage
SEResNet (MONAI)    ``layer4``                        last squeeze-excitation stage
EfficientNet        ``_bn1``                          ``_conv_head`` + BN; the following
                                                      ``_swish`` module is shared with the stem
                                                      so it cannot carry a hook
VGGLike             last ReLU inside ``features``     the final max-pool only halves resolution,
                                                      so the map one step earlier is 2x finer
==================  ================================  ========================================

Resolution matters as much as depth: a CAM can only be as sharp as its grid, and a 64 px input
leaves a VGGLike 4 x 4 and a ResNet 2 x 2 map at the layers above. Given the input size, the
search walks back one stage at a time (VGGLike: the last ReLU of each earlier stage; ResNet /
SEResNet: ``layer3``, ``layer2``; DenseNet: ``features.denseblock3``, ``features.denseblock2``)
until the map has at least ``min_cells`` (7, the grid of the standard 224 px networks) per side.
At the usual 224-512 px inputs the first choice always qualifies and nothing changes.

Any other network falls back to a dry run: the last module, called once, whose output is a
spatial map (N, C, H, W) with H, W > 1 at a 256 px input. ``layer=`` overrides all of this.
"""

from __future__ import annotations

import torch
from torch import nn

from xraytriage.errors import ConfigError

_FAMILY_LAYERS: dict[str, tuple[str, ...]] = {
    "densenet": ("class_layers.relu", "features.denseblock3", "features.denseblock2"),
    "resnet": ("layer4", "layer3", "layer2"),
    "seresnet": ("layer4", "layer3", "layer2"),
    "efficientnet": ("_bn1",),
}
MIN_CELLS = 7


def module_by_name(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; the error lists a few valid names."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        spatial = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU))]
        hint = ", ".join(spatial[-6:])
        raise ConfigError(
            f"layer {name!r} not found in the network; the last conv/norm/relu layers are: {hint}"
        )
    return modules[name]


def _family(backbone: str) -> str:
    backbone = backbone.lower()
    for family in ("seresnet", "densenet", "resnet", "efficientnet"):
        if backbone.startswith(family):
            return family
    return backbone


def _vgg_stage_relus(model: nn.Module) -> tuple[str, ...]:
    """The last ReLU before each max-pool of ``features``, deepest first."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return ()
    names, last_relu = [], None
    for name, module in features.named_children():
        if isinstance(module, nn.ReLU):
            last_relu = name
        elif isinstance(module, nn.MaxPool2d) and last_relu is not None:
            names.append(f"features.{last_relu}")
    return tuple(reversed(names))


def _map_sizes(model: nn.Module, names: tuple[str, ...], in_channels: int, size: int) -> dict[str, int]:
    """min(H, W) of each named layer's output for a size x size input."""
    sizes: dict[str, int] = {}
    modules = dict(model.named_modules())

    def hook(name: str):
        def _record(_module, _inputs, output) -> None:
            sizes.setdefault(name, int(min(output.shape[-2:])))

        return _record

    _probe_forward(model, [(modules[n], hook(n)) for n in names], in_channels, size)
    return sizes


def _probe_forward(model: nn.Module, hooks: list, in_channels: int, size: int) -> None:
    """One no-grad, eval-mode forward of a blank image with forward ``hooks`` ((module, fn)
    pairs) attached; hooks are removed and the training mode restored afterwards."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, size, size))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def _in_channels(model: nn.Module) -> int:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise ConfigError("cannot find a CAM layer: the network has no Conv2d")
    return first_conv.in_channels


def find_target_layer(
    model: nn.Module,
    backbone: str | None = None,
    override: str | None = None,
    input_size: int | None = None,
    min_cells: int = MIN_CELLS,
) -> str:
    """Name of the CAM target layer of ``model`` (see the module docstring for the rules).

    With ``input_size`` the deepest candidate whose map has >= ``min_cells`` per side wins
    (the shallowest candidate if none has).
    """
    if override:
        module_by_name(model, override)
        return override
    family = _family(backbone or "")
    candidates = _vgg_stage_relus(model) if family == "vgg_like" else _FAMILY_LAYERS.get(family, ())
    modules = dict(model.named_modules())
    candidates = tuple(n for n in candidates if n in modules)
    if not candidates:
        return last_spatial_layer(model)
    if input_size is None or len(candidates) == 1:
        return candidates[0]
    sizes = _map_sizes(model, candidates, _in_channels(model), int(input_size))
    for name in candidates:
        if sizes.get(name, 0) >= min_cells:
            return name
    return candidates[-1]


def last_spatial_layer(model: nn.Module, in_channels: int | None = None, size: int = 256) -> str:
    """Dry run: the last singly-called module whose output is a spatial (N, C, H>1, W>1) map."""
    if in_channels is None:
        in_channels = _in_channels(model)
    calls: dict[str, int] = {}
    order: list[tuple[str, tuple[int, ...]]] = []

    def hook(name: str):
        def _record(_module, _inputs, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                order.append((name, tuple(output.shape)))

        return _record

    _probe_forward(model, [(m, hook(n)) for n, m in model.named_modules() if n], in_channels, size)
    spatial = [n for n, shape in order if len(shape) == 4 and shape[2] > 1 and shape[3] > 1 and calls[n] == 1]
    if not spatial:
        raise ConfigError("cannot find a CAM layer: no module produces a spatial feature map")
    return spatial[-1]
