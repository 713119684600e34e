"""Which method draws a finding's map and box, and its name on the picture: the one rule the
explainer and the service's pictures share. Torch-free, so the service can say it without
building the network."""

from __future__ import annotations

from typing import Protocol

LOCALISER_METHODS = ("auto", "localiser")
"""``auto``: the checkpoint's localiser when it has one (Grad-CAM for the findings it does not
cover, and for checkpoints without one); ``localiser``: the same, but a checkpoint without a
localiser is an error."""
CAM_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
"""The CAM methods' names as a legend shows them."""


class Covers(Protocol):
    def covers(self, finding: str) -> bool: ...


def method_name(localiser: Covers | None, finding: str, cam_method: str = "gradcam") -> str:
    """``"localiser"`` for the findings the box-supervised localiser covers (when one is used),
    else the CAM method's display name."""
    if localiser is not None and localiser.covers(finding):
        return "localiser"
    return CAM_NAMES.get(cam_method, cam_method)


__all__ = ["CAM_NAMES", "LOCALISER_METHODS", "method_name"]
