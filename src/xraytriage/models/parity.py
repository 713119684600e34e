"""Does an exported ONNX file compute what the PyTorch network does? Kept apart from the
exporter because it needs both inference backends, and the ONNX backend needs the exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xraytriage.models.checkpoint import Checkpoint
from xraytriage.models.inference import OnnxPredictor, TorchPredictor


def parity_images(checkpoint: Checkpoint, n: int = 4, seed: int = 0) -> np.ndarray:
    """Test inputs that exercise the whole uint8 range: random noise plus smooth gradients."""
    size = int(checkpoint.preprocess.size)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    images[0] = np.rint(np.add.outer(ramp, ramp) / 2).astype(np.uint8)
    return images


def check_parity(
    checkpoint: Checkpoint, onnx_path: str | Path, images: np.ndarray | None = None
) -> dict[str, float]:
    """Max absolute differences between ONNX Runtime and PyTorch eager on the same uint8 images:
    ``{"logits": ..., "probabilities": ...}``."""
    if images is None:
        images = parity_images(checkpoint)
    torch_logits = TorchPredictor(checkpoint).predict_logits(images)
    onnx_logits = OnnxPredictor(onnx_path, checkpoint=checkpoint).predict_logits(images)
    return {
        "logits": float(np.max(np.abs(torch_logits - onnx_logits))),
        "probabilities": float(
            np.max(np.abs(checkpoint.probabilities(torch_logits) - checkpoint.probabilities(onnx_logits)))
        ),
    }
