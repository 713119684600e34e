"""Losses, samplers, batch augmentation and metrics of the training pipeline, one behaviour each."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train_support import single_thread  # noqa: F401 - fixture
from xraytriage.train.augment import BatchAugment
from xraytriage.train.config import AugmentConfig, LossConfig, SamplerConfig
from xraytriage.train.losses import build_loss, positive_fraction
from xraytriage.train.metrics import is_better, validation_metrics, youden_threshold
from xraytriage.train.samplers import EpochSampler, image_weights, oversample_factors

NAN = float("nan")


# --- losses ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bce", "weighted_bce", "wcel", "focal", "asymmetric"])
def test_unknown_labels_do_not_change_the_loss_or_get_gradient(name):
    loss_fn = build_loss(LossConfig(name=name), np.array([0.3, 0.5]))
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [NAN, 1.0], [0.0, -1.0]])  # NaN and -1 (uncertain) are masked
    loss = loss_fn(logits, targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad[1, 0] == 0 and logits.grad[2, 1] == 0
    known = torch.tensor([[0.5, -1.0], [0.0, 0.3], [-0.7, 0.0]])
    # changing a masked logit changes nothing
    assert float(loss_fn(known, targets)) == pytest.approx(float(loss_fn(logits.detach(), targets)))


def test_bce_equals_torch_on_known_entries():
    logits, targets = torch.randn(6, 3), torch.randint(0, 2, (6, 3)).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert float(build_loss(LossConfig(name="bce"), np.full(3, 0.5))(logits, targets)) == pytest.approx(
        float(expected)
    )


def test_weighted_bce_uses_chexnet_weights_from_training_prevalence():
    pos = positive_fraction(np.array([[1, 0], [0, 0], [0, NAN], [0, 1]], dtype=np.float32))
    assert pos.tolist() == pytest.approx([0.25, 1 / 3])
    loss_fn = build_loss(LossConfig(name="weighted_bce"), pos)
    logits, targets = torch.tensor([[0.2, -0.4]]), torch.tensor([[1.0, 0.0]])
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")[0]
    expected = (0.75 * bce[0] + (1 / 3) * bce[1]) / 2  # w+ = |N|/(|P|+|N|), w- = |P|/(|P|+|N|)
    assert float(loss_fn(logits, targets)) == pytest.approx(float(expected))


def test_wcel_weights_positives_and_negatives_by_batch_counts():
    logits = torch.tensor([[0.1, -0.2], [0.4, 0.3]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # |P| = 1, |N| = 3 in the batch
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = (4 / 1 * bce[0, 0] + 4 / 3 * (bce[0, 1] + bce[1, 0] + bce[1, 1])) / 4
    assert float(build_loss(LossConfig(name="wcel"), np.full(2, 0.5))(logits, targets)) == pytest.approx(
        float(expected)
    )


def test_focal_with_gamma_zero_is_bce_and_focuses_on_hard_examples():
    logits, targets = torch.randn(5, 2), torch.randint(0, 2, (5, 2)).float()
    bce = build_loss(LossConfig(name="bce"), np.full(2, 0.5))
    focal0 = build_loss(LossConfig(name="focal", focal_gamma=0.0), np.full(2, 0.5))
    assert float(focal0(logits, targets)) == pytest.approx(float(bce(logits, targets)))
    focal = build_loss(LossConfig(name="focal"), np.full(1, 0.5))
    easy, hard = torch.tensor([[4.0]]), torch.tensor([[-4.0]])
    one = torch.tensor([[1.0]])
    assert float(focal(easy, one)) / float(bce(easy, one)) < float(focal(hard, one)) / float(bce(hard, one))


def test_asymmetric_loss_ignores_easy_negatives_below_the_clip():
    asl = build_loss(LossConfig(name="asymmetric", asl_clip=0.05), np.full(1, 0.5))
    easy_negative = torch.tensor([[-4.0]])  # p = 0.018 < clip
    assert float(asl(easy_negative, torch.tensor([[0.0]]))) == pytest.approx(0.0, abs=1e-6)
    assert float(asl(torch.tensor([[2.0]]), torch.tensor([[0.0]]))) > 0


# --- samplers --------------------------------------------------------------------------------------
LABELS = np.array([[1, 0]] * 2 + [[0, 1]] * 8 + [[0, 0]] * 30, dtype=np.float32)


def test_weighted_sampler_balances_rare_labels():
    weights = image_weights(LABELS)
    assert weights[0] == pytest.approx(0.5) and weights[2] == pytest.approx(1 / 8)
    sampler = EpochSampler(LABELS, SamplerConfig(name="weighted", num_samples=6000), seed=1)
    drawn = LABELS[list(sampler)]
    share_rare = (drawn[:, 0] == 1).mean()
    assert 0.25 < share_rare < 0.42  # ~1/3 each: rare label, common label, no finding (2/40 unweighted)


def test_oversample_repeats_rare_images_and_undersample_drops_negatives():
    factors = oversample_factors(LABELS, max_factor=10)
    assert factors[0] == 10 and factors[2] == 4 and factors[-1] == 1  # target: 30 images with no finding
    over = EpochSampler(LABELS, SamplerConfig(name="oversample", max_factor=10))
    assert len(list(over)) == 2 * 10 + 8 * 4 + 30
    under = list(EpochSampler(LABELS, SamplerConfig(name="undersample", neg_ratio=0.5)))
    assert len(under) == 10 + 5 and sum(LABELS[i].sum() == 0 for i in under) == 5


def test_sampler_is_a_function_of_seed_and_epoch_and_shards_disjointly():
    a, b = EpochSampler(LABELS, seed=3), EpochSampler(LABELS, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    shards = [EpochSampler(LABELS, seed=3, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(2)
    seen = [i for s in shards for i in s]
    assert len({len(list(s)) for s in shards}) == 1  # equal steps on every rank
    assert set(seen) == set(range(len(LABELS)))


# --- augmentation ----------------------------------------------------------------------------------
def test_augmentation_is_off_when_disabled_and_flip_is_exact():
    x = torch.rand(4, 1, 16, 16) * 255
    assert torch.equal(BatchAugment(AugmentConfig(enabled=False))(x), x)
    flip_only = AugmentConfig(hflip=1.0, rotate=0, scale=(1.0, 1.0), translate=0, brightness=0, contrast=0)
    assert torch.allclose(BatchAugment(flip_only)(x), torch.flip(x, dims=[3]), atol=1e-3)


def test_every_augmentation_changes_images_within_range_and_is_seeded():
    x = torch.rand(8, 1, 32, 32) * 255
    config = AugmentConfig(rotate=7, scale=(0.9, 1.1), translate=0.1, brightness=0.1, contrast=0.2, crop=1.0)
    a, b = BatchAugment(config, seed=5), BatchAugment(config, seed=5)
    a.set_epoch(1)
    b.set_epoch(1)
    out = a(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    assert not torch.allclose(out, x)
    assert torch.equal(out, b(x))


def test_affine_parameters_stay_within_the_configured_ranges():
    config = AugmentConfig(hflip=0, rotate=7, scale=(0.9, 1.1), translate=0.05, brightness=0, contrast=0)
    theta = BatchAugment(config, seed=1).matrices(500)
    angles = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    scales = 1 / torch.sqrt(torch.det(theta[:, :, :2]))
    assert angles.abs().max() <= 7.0 + 1e-4 and angles.std() > 2.0  # the seeds' ±7°
    assert scales.min() >= 0.9 - 1e-4 and scales.max() <= 1.1 + 1e-4
    assert theta[:, :, 2].abs().max() <= 0.1 + 1e-6  # 5 % of the size = 0.1 in [-1, 1] coordinates


# --- metrics ---------------------------------------------------------------------------------------
def test_metrics_named_means_skip_undefined_labels_and_youden_threshold_separates():
    labels = np.array([[0, 1], [0, 1], [1, 1], [1, NAN]], dtype=np.float32)
    probs = np.array([[0.1, 0.5], [0.3, 0.6], [0.8, 0.7], [0.9, 0.2]], dtype=np.float32)
    metrics = validation_metrics(labels, probs, label_names=["A", "B"], loss=0.5)
    assert metrics["auc/A"] == 1.0 and math.isnan(metrics["auc/B"]) and metrics["mean_auc_2_findings"] == 1.0
    assert youden_threshold(labels[:, 0], probs[:, 0]) == pytest.approx(0.8)  # lowest p of the positives
    assert is_better(0.7, None, True) and not is_better(NAN, 0.5, True) and is_better(0.4, 0.5, False)
