"""The box-supervised localiser: a small U-Net that paints, per finding, where that finding is.

Trained on the NIH box images as "squares of pixel-wise labels" (seed 003's framing of boxes as
segmentation targets), it answers a different question from the classifier: *given* that a
finding is present, where is it? The classifier decides which findings to show; the localiser
draws their boxes. It lives inside the classifier's checkpoint (key ``localiser``) as a plain
dict, so a checkpoint alone still carries everything needed to serve it.

Why a segmentation network rather than a detector: MONAI's RetinaNet needs torchvision's compiled
ops, which do not import with the CPU torch this project targets; a U-Net on box masks runs
anywhere, and its per-pixel map plugs into the same box extraction and overlays as Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from xraytriage.errors import ConfigError
from xraytriage.labels import NIH_BOX_FINDINGS, canonical_label
from xraytriage.preprocess import PreprocessContract

LOCALISER_FORMAT = "xraytriage-localiser"


@dataclass(frozen=True)
class LocaliserSpec:
    """What a localiser is: its findings, its network widths and its input contract."""

    findings: tuple[str, ...] = NIH_BOX_FINDINGS
    features: tuple[int, ...] = (12, 24, 48, 96, 192, 12)
    """MONAI BasicUNet widths (five encoder levels and the last decoder level)."""
    preprocess: PreprocessContract = field(
        default_factory=lambda: PreprocessContract(size=256, intensity="clahe")
    )
    box_threshold: float = 0.5
    """Share of a map's peak at which boxes are drawn around its hot regions."""

    def __post_init__(self) -> None:
        if not self.findings:
            raise ConfigError("localiser: at least one finding is needed")
        if len(self.features) != 6:
            raise ConfigError(f"localiser.features needs 6 widths, got {list(self.features)}")
        if self.preprocess.channels != 1:
            raise ConfigError("localiser: the input contract must have 1 channel")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = list(self.findings)
        data["features"] = list(self.features)
        data["preprocess"] = self.preprocess.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocaliserSpec:
        return cls(
            findings=tuple(canonical_label(str(f)) for f in data["findings"]),
            features=tuple(int(v) for v in data.get("features", cls.features)),
            preprocess=PreprocessContract.from_dict(dict(data["preprocess"])),
            box_threshold=float(data.get("box_threshold", 0.5)),
        )


def build_localiser_net(spec: LocaliserSpec) -> nn.Module:
    """MONAI BasicUNet, one output channel per finding (logits)."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=len(spec.findings),
        features=spec.features,
        act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm=("instance", {"affine": True}),
        dropout=0.0,
    )


class Localiser:
    """A trained localiser, ready to paint maps on original-size images."""

    def __init__(self, spec: LocaliserSpec, state_dict: dict[str, torch.Tensor], metrics: dict | None = None):
        self.spec = spec
        self.state_dict = state_dict
        self.metrics = dict(metrics or {})
        self._net: nn.Module | None = None

    @property
    def findings(self) -> tuple[str, ...]:
        return self.spec.findings

    @property
    def net(self) -> nn.Module:
        if self._net is None:
            net = build_localiser_net(self.spec)
            net.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
            )
            self._net = net.eval()
        return self._net

    def covers(self, finding: str) -> bool:
        return canonical_label(finding) in self.spec.findings

    @torch.no_grad()
    def input_maps(self, images_uint8: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, S, S) uint8 network inputs -> (N, F, S, S) probabilities in [0, 1]."""
        x = torch.as_tensor(np.asarray(images_uint8))
        x = self.spec.preprocess.normalize(x)
        return torch.sigmoid(self.net(x)).numpy().astype(np.float32)

    def maps(self, pixels: np.ndarray, findings: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Per finding, a map on the original image (H x W, scaled to its peak, 0 where the network
        sees nothing), for ``pixels`` (float [0, 1], H x W)."""
        from xraytriage.geometry import map_to_original

        wanted = [canonical_label(f) for f in (findings or self.spec.findings)]
        indices = [self.spec.findings.index(f) for f in wanted if f in self.spec.findings]
        if not indices:
            return {}
        prepared = self.spec.preprocess.to_uint8(np.asarray(pixels, dtype=np.float32))
        maps = self.input_maps(prepared[None])[0]
        h, w = pixels.shape[:2]
        out = map_to_original(maps[indices], self.spec.preprocess, h, w, normalize=True)
        return {self.spec.findings[i]: out[k] for k, i in enumerate(indices)}

    # --- persistence ---------------------------------------------------------------------
    def to_dict(self, half: bool = True) -> dict[str, Any]:
        state = {
            k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
            for k, v in self.state_dict.items()
        }
        return {
            "format": LOCALISER_FORMAT,
            "spec": self.spec.to_dict(),
            "state_dict": state,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Localiser:
        if data.get("format") != LOCALISER_FORMAT:
            raise ConfigError("not an xraytriage localiser (missing format marker)")
        return cls(
            LocaliserSpec.from_dict(data["spec"]), dict(data["state_dict"]), dict(data.get("metrics", {}))
        )

    def save(self, path) -> None:
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_dict(), tmp)
        tmp.replace(path)


def load_localiser(path) -> Localiser:
    """A localiser file (``localiser train``) or the localiser inside a classifier checkpoint."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: localiser file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot load localiser: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("localiser"), dict):
        data = data["localiser"]
    if not isinstance(data, dict) or data.get("format") != LOCALISER_FORMAT:
        raise ConfigError(f"{path}: neither a localiser nor a checkpoint with one")
    return Localiser.from_dict(data)
