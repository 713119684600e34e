"""What the weights of known publishers expect as input (``xraytriage import-weights --preset``).

Apart from the importer so the CLI can list the presets without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xraytriage.labels import NIH_FINDINGS


@dataclass(frozen=True)
class WeightsPreset:
    """What a publisher's weights expect as input."""

    channels: int
    size: int
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    labels: tuple[str, ...]
    description: str
    geometry: tuple[tuple[str, Any], ...] = ()
    """Further :class:`PreprocessContract` fields (crop, resize filter) of the publisher's input."""


PRESETS: dict[str, WeightsPreset] = {
    # CheXNet (Rajpurkar et al. 2017) reproductions: ImageNet-initialised, 3-channel, ImageNet
    # statistics, 224 px, the 14 NIH findings in NIH order.
    "chexnet": WeightsPreset(
        channels=3,
        size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        labels=NIH_FINDINGS,
        description="CheXNet reproduction: 3-channel, ImageNet mean/std, short side 256 then centre 224 px, "
        "NIH 14 findings",
        geometry=(("resize", "resize_crop"), ("resize_to", 256), ("resample", "bilinear")),
    ),
    # torchxrayvision: 1 channel scaled to [-1024, 1024] = (x/255 - 0.5) * 2048, 224 px.
    "torchxrayvision": WeightsPreset(
        channels=1,
        size=224,
        mean=0.5,
        std=1.0 / 2048.0,
        labels=(),
        description="torchxrayvision: 1-channel, pixels mapped to [-1024, 1024], centre square resized to "
        "224 px (give --labels)",
        geometry=(("resize", "square_crop"), ("resample", "gaussian")),
    ),
}
