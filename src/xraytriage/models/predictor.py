"""What a model backend offers, without importing one: the :class:`Predictor` protocol and the
backend names. Light on purpose (no torch, no ONNX Runtime), so the triage engine's decoder
processes and the CLI's argument parser can use it."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

BACKENDS = ("onnx", "onnx-int8", "torch")
"""onnx-int8: the int8 twin of the ONNX export (``models.quantize``): faster on CPUs with VNNI."""
DEFAULT_BACKEND = "onnx"


class Predictor(Protocol):
    """A backend (``models.inference.TorchPredictor``, ``OnnxPredictor``): uint8 batch in, logits out."""

    checkpoint: Any
    name: str

    def predict_logits(self, batch_uint8: np.ndarray) -> np.ndarray: ...
