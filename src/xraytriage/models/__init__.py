"""Networks built from configuration, the checkpoint format, inference, export and weight import."""

from xraytriage.models.checkpoint import Checkpoint, load_checkpoint
from xraytriage.models.factory import BACKBONES, ModelConfig, build_model

__all__ = ["BACKBONES", "Checkpoint", "ModelConfig", "build_model", "load_checkpoint"]
