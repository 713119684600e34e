"""Batched inference on preprocessed uint8 images. Backends share one interface:
``predict_logits(uint8 batch N x S x S) -> float32 logits N x L``."""

from __future__ import annotations

import numpy as np
import torch

from xraytriage.models.checkpoint import Checkpoint


class TorchPredictor:
    """PyTorch eager backend (reference for parity tests and the fallback everywhere)."""

    name = "torch"

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu") -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.model = checkpoint.build_model().to(self.device)

    @torch.inference_mode()
    def predict_logits(self, batch_uint8: np.ndarray) -> np.ndarray:
        x = self.checkpoint.preprocess.normalize(torch.as_tensor(np.asarray(batch_uint8)).to(self.device))
        return self.model(x).float().cpu().numpy()

    def predict_proba(self, batch_uint8: np.ndarray) -> np.ndarray:
        return self.checkpoint.probabilities(self.predict_logits(batch_uint8))
