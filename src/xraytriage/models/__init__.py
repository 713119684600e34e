"""Networks built from configuration, the checkpoint format, inference, export and weight import.

The names below load on first use (PEP 562), so importing a light submodule such as
``xraytriage.models.predictor`` does not pull in torch and MONAI (~2 s): the triage engine's
decoder processes and the CLI's argument parser import it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BACKBONES": "xraytriage.models.factory",
    "ModelConfig": "xraytriage.models.factory",
    "build_model": "xraytriage.models.factory",
    "Checkpoint": "xraytriage.models.checkpoint",
    "load_checkpoint": "xraytriage.models.checkpoint",
}

__all__ = ["BACKBONES", "Checkpoint", "ModelConfig", "build_model", "load_checkpoint"]

if TYPE_CHECKING:
    from xraytriage.models.checkpoint import Checkpoint, load_checkpoint
    from xraytriage.models.factory import BACKBONES, ModelConfig, build_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
