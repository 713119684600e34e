"""Multi-label losses on logits with masking: a target that is NaN (unknown, uncertain under
U-Ignore, or absent from the source dataset) contributes nothing, and the loss is averaged over
the entries that are known.

- ``bce``: binary cross-entropy.
- ``weighted_bce``: CheXNet's positive-class weighting, per label from the training set:
  w+ = |N| / (|P| + |N|), w- = |P| / (|P| + |N|).
- ``wcel``: the seed report's batch-weighted W-CEL (Wang et al. 2017):
  beta_P = (|P| + |N|) / |P|, beta_N = (|P| + |N|) / |N|, counted in each batch.
- ``focal``: Lin et al. focal loss, (1 - p_t)^gamma * BCE, optional alpha balance.
- ``asymmetric``: Ridnik et al. ASL: gamma_pos / gamma_neg focusing and probability clipping of
  negatives.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xraytriage.train.config import LossConfig


def known_mask(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of usable entries, targets with unusable ones replaced by 0). Usable: values in
    [0, 1] (hard labels and label-smoothed ones); NaN, -1 (uncertain) or 2 (a third class) are not."""
    mask = (targets >= 0) & (targets <= 1)
    return mask, torch.where(mask, targets, torch.zeros_like(targets))


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum()
    total = (loss * mask).sum()
    return total / count.clamp(min=1)


class MaskedLoss(nn.Module):
    """Base: subclasses give the element-wise loss; masking and averaging happen here."""

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        mask, clean = known_mask(targets.to(logits.device).float())
        return _masked_mean(self.elementwise(logits, clean, mask), mask)


class BCELoss(MaskedLoss):
    def elementwise(self, logits, targets, mask):
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


class WeightedBCELoss(MaskedLoss):
    """CheXNet weighting from the training-set positive fraction of each label."""

    def __init__(self, positive_fraction: np.ndarray) -> None:
        super().__init__()
        pos = torch.as_tensor(np.nan_to_num(positive_fraction, nan=0.5), dtype=torch.float32).clamp(0.0, 1.0)
        self.register_buffer("w_pos", 1.0 - pos)
        self.register_buffer("w_neg", pos)

    def elementwise(self, logits, targets, mask):
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return bce * (targets * self.w_pos + (1 - targets) * self.w_neg)


class WCELoss(MaskedLoss):
    """Batch-weighted cross-entropy; counts over the whole batch (the report) or per label."""

    def __init__(self, per_class: bool = False) -> None:
        super().__init__()
        self.per_class = per_class

    def elementwise(self, logits, targets, mask):
        pos = targets * mask  # soft labels count fractionally
        neg = (1 - targets) * mask
        n_pos = pos.sum(dim=0) if self.per_class else pos.sum()
        n_neg = neg.sum(dim=0) if self.per_class else neg.sum()
        total = n_pos + n_neg
        beta_p = total / n_pos.clamp(min=1)
        beta_n = total / n_neg.clamp(min=1)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return bce * (pos * beta_p + neg * beta_n)


class FocalLoss(MaskedLoss):
    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def elementwise(self, logits, targets, mask):
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = (1 - p_t).pow(self.gamma) * bce
        if self.alpha is not None:
            loss = loss * (self.alpha * targets + (1 - self.alpha) * (1 - targets))
        return loss


class AsymmetricLoss(MaskedLoss):
    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05) -> None:
        super().__init__()
        self.gamma_pos, self.gamma_neg, self.clip = gamma_pos, gamma_neg, clip

    def elementwise(self, logits, targets, mask):
        p = torch.sigmoid(logits)
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p  # shifted probability for negatives
        log_pos = F.logsigmoid(logits)
        log_neg = torch.log((1 - p_neg).clamp(min=1e-8))
        loss_pos = targets * log_pos * (1 - p).pow(self.gamma_pos)
        loss_neg = (1 - targets) * log_neg * p_neg.pow(self.gamma_neg)
        return -(loss_pos + loss_neg)


def build_loss(config: LossConfig, positive_fraction: np.ndarray) -> MaskedLoss:
    """The configured loss; ``positive_fraction`` (per label, training set) feeds weighted_bce."""
    if config.name == "bce":
        return BCELoss()
    if config.name == "weighted_bce":
        return WeightedBCELoss(positive_fraction)
    if config.name == "wcel":
        return WCELoss(per_class=config.wcel_per_class)
    if config.name == "focal":
        return FocalLoss(config.focal_gamma, config.focal_alpha)
    return AsymmetricLoss(config.asl_gamma_pos, config.asl_gamma_neg, config.asl_clip)


def positive_fraction(labels: np.ndarray) -> np.ndarray:
    """Share of positives among the usable ([0, 1]) entries of each label; NaN when none is known."""
    labels = np.asarray(labels, dtype=np.float32)
    usable = (labels >= 0) & (labels <= 1)
    pos = np.where(usable, labels, 0).sum(axis=0).astype(np.float64)
    known = usable.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(known > 0, pos / np.maximum(known, 1), np.nan)
