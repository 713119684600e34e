"""Mixed precision on CPUs: ``amp: auto`` picks bf16 exactly where the CPU has bf16 units
(detector monkeypatched both ways), turns channels_last on with it, and a bf16 run still learns;
the localiser's training follows the same rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train_support import make_data, single_thread, tiny_config  # noqa: F401 - fixture
from xraytriage.errors import ConfigError
from xraytriage.train import optim
from xraytriage.train.config import TrainConfig
from xraytriage.train.data import train_val_indices
from xraytriage.train.localiser import LocaliserTrainConfig
from xraytriage.train.run import prepare_data
from xraytriage.train.trainer import Trainer

CPU = torch.device("cpu")


@pytest.mark.parametrize("has_bf16, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_amp_on_cpu_follows_the_bf16_detector(monkeypatch, has_bf16, expected):
    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: has_bf16)
    assert optim.resolve_amp("auto", CPU) == expected
    assert optim.resolve_amp("none", CPU) is None
    assert optim.resolve_amp("bf16", CPU) == torch.bfloat16  # asked for explicitly: always
    with pytest.raises(ConfigError, match="fp16"):
        optim.resolve_amp("fp16", CPU)


@pytest.mark.parametrize(
    "avx512_bf16, amx, flags, expected",
    [
        (True, False, set(), True),
        (False, True, set(), True),
        (False, False, {"avx2", "avx512f", "amx_bf16"}, True),
        (False, False, {"avx2", "avx512f", "avx512_bf16"}, True),
        (False, False, {"avx2", "avx512f", "avx512_vnni"}, False),
        (False, False, set(), False),
    ],
)
def test_bf16_detector_reads_torch_probes_and_cpu_flags(monkeypatch, avx512_bf16, amx, flags, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(optim, "_cpu_flags", lambda: flags)
    assert optim.cpu_has_bf16() is expected


def test_cpu_flags_parse_this_machine():
    flags = optim._cpu_flags()
    assert isinstance(flags, set)
    if flags:  # Linux: the flags line of /proc/cpuinfo, whatever the CPU
        assert all(" " not in f and f for f in flags)


def test_channels_last_default_follows_mixed_precision():
    assert optim.use_channels_last(None, torch.bfloat16) is True
    assert optim.use_channels_last(None, None) is False
    assert optim.use_channels_last(False, torch.bfloat16) is False  # an explicit setting wins
    assert optim.use_channels_last(True, None) is True


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("bf16"), n_images=160, size=48, n_patients=80, seed=3)


def _trainer(csv, output, amp: str) -> Trainer:
    config = TrainConfig.from_dict(
        tiny_config(
            csv,
            data={
                "options": {"csv": str(csv), "labels": ["Mass", "Effusion", "No Finding"]},
                "val_fraction": 0.3,
            },
            preprocess={"size": 48},
            optim={"lr": 3e-3},
            epochs=5,
            batch_size=16,
            max_steps_per_epoch=None,
            amp=amp,
            device="cpu",
        )
    )
    data = prepare_data(config)
    train_idx, val_idx = train_val_indices(
        data.dataset, config.data.val_fraction, config.effective_split_seed
    )
    train_set, val_set = data.dataset.subset(train_idx), data.dataset.subset(val_idx)
    return Trainer(config, train_set, val_set, output, source=data.source)


@pytest.mark.slow  # a training run
@pytest.mark.parametrize("has_bf16", [True, False])
def test_trainer_trains_in_the_precision_auto_picks_and_still_learns(
    monkeypatch, learn_data, tmp_path, has_bf16
):
    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: has_bf16)
    trainer = _trainer(learn_data, tmp_path / "run", "auto")
    assert trainer.amp_dtype == (torch.bfloat16 if has_bf16 else None)
    assert trainer.channels_last is has_bf16
    conv = next(m for m in trainer.net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is has_bf16
    result = trainer.fit()
    # the weights stay float32 (autocast computes in bf16, the optimiser updates float32 masters)
    assert all(p.dtype == torch.float32 for p in trainer.net.parameters())
    assert result.best_metrics["auc/Mass"] > 0.7 and result.best_metrics["auc/Effusion"] > 0.7
    assert np.isfinite(trainer.history[-1]["train_loss"])


def test_bf16_and_float32_forward_passes_agree_closely(learn_data, tmp_path):
    """The same weights scored in both precisions: bf16 rounding, not a different model."""
    trainer = _trainer(learn_data, tmp_path / "run", "none")
    net = trainer.net.eval()
    x = torch.randn(16, 1, 48, 48)
    with torch.no_grad():
        full = torch.sigmoid(net(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = torch.sigmoid(net(x.contiguous(memory_format=torch.channels_last)).float())
    assert float((full - half).abs().max()) < 0.05


def test_localiser_amp_option_is_checked():
    assert LocaliserTrainConfig().amp == "auto"
    assert LocaliserTrainConfig.from_mapping({"amp": "none"}).amp == "none"
    with pytest.raises(ConfigError, match="amp must be auto\\|bf16\\|none"):
        LocaliserTrainConfig.from_mapping({"amp": "fp8"}, source="loc.yaml")
