"""Training config: YAML + --set overrides, type checking, clear errors, CLI exit codes."""

from __future__ import annotations

import pytest
import yaml

from train_support import make_data, single_thread, tiny_config  # noqa: F401 - fixture
from xraytriage.cli.main import main
from xraytriage.errors import ConfigError
from xraytriage.train.config import TrainConfig, load_config


def write(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_and_overrides_are_typed(tmp_path):
    cfg = load_config(
        write(tmp_path / "c.yaml", {"optim": {"lr": "1e-4"}, "model": {"backbone": "resnet18"}}),
        ["optim.lr=3e-4", "augment.scale=[0.9, 1.1]", "early_stopping.patience=4", "data.options.csv=x.csv"],
    )
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML reads 3e-4 as a string; the field is a float
    assert cfg.augment.scale == (0.9, 1.1)
    assert cfg.early_stopping.patience == 4
    assert cfg.data.options == {"csv": "x.csv"}
    assert cfg.model.backbone == "resnet18"
    assert cfg.early_stopping.maximize and cfg.epochs == 10


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["loss.name=focal", "preprocess.size=128", "sampler.name=weighted"])
    path = cfg.save(tmp_path / "resolved.yaml")
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()
    assert again.preprocess.size == 128 and again.loss.name == "focal"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=0.1"], "did you mean optim.lr"),
        (["epochz=3"], "did you mean epochs"),
        (["loss.name=bce2"], "loss.name must be one of"),
        (["epochs=three"], "epochs must be an integer"),
        (["channels_last=maybe"], "channels_last must be true or false"),
        (["model.backbone=densenet999"], "unknown backbone"),
        (["optim.lr=-1"], "optim.lr must be > 0"),
        (["augment.scale=[1.2, 0.8]"], "augment.scale"),
        (["init.mode=freeze_backbone"], "needs init.checkpoint"),
        (["early_stopping.metric=accuracy"], "early_stopping.metric"),
        (["preprocess.size=8"], "preprocess.size"),
        (["optim"], "key=value"),
        (["optim.lr.x=1"], "optim.lr must be a number"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(None, overrides)


def test_from_dict_rejects_non_mapping_section():
    with pytest.raises(ConfigError, match="optim must be a mapping"):
        TrainConfig.from_dict({"optim": 3})


def test_cli_bad_config_exits_nonzero_with_message(tmp_path, capsys):
    csv = make_data(tmp_path / "data", n_images=8)
    cfg = write(tmp_path / "c.yaml", tiny_config(csv))
    assert main(["train", cfg, "--set", "model.backbone=densenet999", "--output", str(tmp_path / "r1")]) == 2
    assert "unknown backbone 'densenet999'" in capsys.readouterr().err
    assert main(["train", cfg, "--set", "data.labels=[Cardiomegaly]", "--output", str(tmp_path / "r2")]) == 2
    assert "Cardiomegaly" in capsys.readouterr().err
    assert main(["cv", cfg, "--folds", "1"]) == 2
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()


def test_every_example_config_is_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 8
    for path in configs:
        cfg = load_config(path)
        assert cfg.epochs >= 1, path
