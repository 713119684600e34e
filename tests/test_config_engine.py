"""The pydantic config engine: errors name the file and the field, YAML's types are read as a
person means them, and resolved configs (also those stored in checkpoints) load back."""

from __future__ import annotations

import pytest
import yaml

from xraytriage.errors import ConfigError
from xraytriage.train.config import TrainConfig, load_config


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"optim": {"betas": [0.9]}}, "optim.betas must have 2 values, got [0.9]"),
        ({"augment": {"scale": "wide"}}, "augment.scale must be a list of 2 values, got 'wide'"),
        ({"epochs": True}, "epochs must be an integer, got True"),
        ({"channels_last": 1}, "channels_last must be true or false, got 1"),
        (
            {"preprocess": {"sizes": 64}},
            "unknown config key 'preprocess.sizes' (did you mean preprocess.size?)",
        ),
        (
            {"preprocess": {"resize": "crop"}},
            "preprocess.resize must be one of squash, letterbox, center_crop",
        ),
        ({"data": {"labels": "Mass"}}, "data.labels must be a list, got 'Mass'"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path, section, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_lax_numbers_and_resolved_dict(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-4", "epochs=3.0", "name=2024", "data.options={1: a}"])
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.name == "2024" and cfg.data.options == {"1": "a"}
    plain = cfg.to_dict()
    assert plain["augment"]["scale"] == [0.95, 1.05] and isinstance(plain["preprocess"]["percentiles"], list)
    assert list(plain)[:3] == ["name", "data", "preprocess"]  # field order, as config.yaml shows it
    assert TrainConfig.from_dict(plain) == cfg


def test_fields_are_documented():
    """The docstring under a field is its pydantic description (e.g. for generated docs)."""
    assert "Clip the global gradient norm" in TrainConfig.model_fields["grad_clip"].description
