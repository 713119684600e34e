"""What the network learned: feature maps of every convolution for one image, first-layer filters.

The seed report asked to "visualise the filters and feature maps of each layer". One grayscale
PNG grid per Conv2d layer: each tile is one output channel (the first ``max_channels``), scaled
to its own min..max so weak channels stay visible, tiles enlarged to at least ``min_tile`` px
with nearest-neighbour so the feature grid stays honest. First-layer filters are tiled the same
way, centred on zero (mid-grey = 0, white = positive weight).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from xraytriage.sanitize import file_slug


def tile_grid(tiles: np.ndarray, min_tile: int = 32, gap: int = 1) -> np.ndarray:
    """(n, h, w) values in [0, 1] -> one uint8 mosaic, near-square, tiles separated by ``gap`` px."""
    n, h, w = tiles.shape
    scale = max(1, math.ceil(min_tile / max(1, min(h, w))))
    tiles = np.repeat(np.repeat(tiles, scale, axis=1), scale, axis=2)
    h, w = h * scale, w * scale
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), 0.15, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[i]
    return np.clip(np.rint(grid * 255), 0, 255).astype(np.uint8)


def _per_channel_minmax(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    return (maps - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0)


def conv_feature_maps(model: nn.Module, x: torch.Tensor, max_channels: int = 64) -> dict[str, np.ndarray]:
    """Output of every Conv2d for the single image ``x`` (1, C, H, W): name -> (k, h, w) float."""
    outputs: dict[str, np.ndarray] = {}

    def hook(name: str):
        def _keep(_module, _inputs, output) -> None:
            outputs[name] = output[0, :max_channels].detach().float().cpu().numpy()

        return _keep

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def first_layer_filters(model: nn.Module, max_filters: int = 64) -> np.ndarray:
    """First Conv2d's kernels as (n, kh, kw) grayscale in [0, 1] (channels averaged), 0.5 = zero."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("the network has no Conv2d layer")
    weights = conv.weight.detach().float().cpu().numpy()[:max_filters].mean(axis=1)
    limit = np.abs(weights).max(axis=(1, 2), keepdims=True)
    return 0.5 + 0.5 * weights / np.where(limit > 0, limit, 1.0)


def write_feature_maps(
    model: nn.Module, x: torch.Tensor, output: str | Path, max_channels: int = 64
) -> list[Path]:
    """One PNG per Conv2d layer (``NNN_<layer>.png``, in forward order) plus ``filters_first_layer.png``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (name, maps) in enumerate(conv_feature_maps(model, x, max_channels).items()):
        path = output / f"{i:03d}_{file_slug(name, keep='_.-', fallback='layer')}.png"
        Image.fromarray(tile_grid(_per_channel_minmax(maps)), mode="L").save(path)
        written.append(path)
    path = output / "filters_first_layer.png"
    Image.fromarray(tile_grid(first_layer_filters(model), min_tile=24), mode="L").save(path)
    written.append(path)
    return written
