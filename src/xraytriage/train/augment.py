"""Batch augmentation on tensors, on whatever device the batch is on (GPU included).

All geometric changes (horizontal flip, rotation, scale, translation, random resized crop) are
folded into one affine matrix per image and applied with a single ``affine_grid`` +
``grid_sample``; areas shifted in are black, like a radiograph's border. Brightness and contrast
follow. Works on float images in the uint8 range [0, 255] *before* the contract's
normalisation, so training and serving still share ``PreprocessContract.normalize``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xraytriage.train.config import AugmentConfig


class BatchAugment:
    def __init__(self, config: AugmentConfig, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def geometric(self) -> bool:
        c = self.config
        return c.hflip > 0 or c.rotate > 0 or c.scale != (1.0, 1.0) or c.translate > 0 or c.crop > 0

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def matrices(self, n: int) -> torch.Tensor:
        """(n, 2, 3) affine matrices mapping output to input coordinates in [-1, 1]."""
        c = self.config
        flip = torch.where(torch.rand(n, generator=self.generator) < c.hflip, -1.0, 1.0)
        angle = self._uniform(n, -c.rotate, c.rotate) * math.pi / 180.0
        scale = self._uniform(n, *c.scale)
        shift = self._uniform(2 * n, -2 * c.translate, 2 * c.translate).view(n, 2)  # [-1,1] spans 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        linear = torch.stack([torch.stack([cos * flip, -sin], 1), torch.stack([sin * flip, cos], 1)], 1)
        if c.crop > 0:  # random resized crop: sample a sub-window, then stretch it to the full size
            use = torch.rand(n, generator=self.generator) < c.crop
            area = self._uniform(n, *c.crop_scale)
            log_ratio = self._uniform(n, math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]))
            ratio = torch.exp(log_ratio)
            w = torch.sqrt(area * ratio).clamp(max=1.0)
            h = torch.sqrt(area / ratio).clamp(max=1.0)
            cx = self._uniform(n, -1.0, 1.0) * (1 - w)
            cy = self._uniform(n, -1.0, 1.0) * (1 - h)
            w, h = torch.where(use, w, 1.0), torch.where(use, h, 1.0)
            cx, cy = torch.where(use, cx, 0.0), torch.where(use, cy, 0.0)
            crop = torch.diag_embed(torch.stack([w, h], 1))
            linear = crop @ linear
            shift = (crop @ shift.unsqueeze(-1)).squeeze(-1) + torch.stack([cx, cy], 1)
        return torch.cat([linear, shift.unsqueeze(-1)], dim=2)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """float (N, C, H, W) in [0, 255] -> augmented, same shape, device and range."""
        c = self.config
        if not c.enabled:
            return images
        n = images.shape[0]
        x = images.float()
        if self.geometric:
            theta = self.matrices(n).to(x.device)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if c.contrast > 0 or c.brightness > 0:
            gain = self._uniform(n, 1 - c.contrast, 1 + c.contrast).to(x.device).view(n, 1, 1, 1)
            offset = (self._uniform(n, -c.brightness, c.brightness) * 255.0).to(x.device).view(n, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * gain + mean + offset
        return x.clamp(0.0, 255.0)

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        """Random draws become a function of (seed, epoch, rank): a resumed run repeats them."""
        self.generator.manual_seed(self.seed * 1_000_003 + epoch * 1009 + rank)
