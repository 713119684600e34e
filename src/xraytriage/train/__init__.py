"""Training: configs, losses, samplers, batch augmentation, the loop, k-fold CV and DDP."""

from xraytriage.train.config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
