"""One ``--model`` rule: the CLI, the service's config and ``load_model`` all resolve through
``models.published.resolve_model``, and only that module knows where the bundled model lives."""

from __future__ import annotations

from pathlib import Path

import pytest

import xraytriage
from xraytriage.cli.common import resolve_model_path
from xraytriage.errors import UnknownModelError
from xraytriage.models.published import BUNDLED_MODEL, resolve_model
from xraytriage.serving.config import ServeConfig

PACKAGE = Path(xraytriage.__file__).parent


@pytest.mark.parametrize("value", [None, "default", "nih-default-compact"])
def test_cli_and_service_resolve_the_bundled_model_alike(value, tmp_path):
    assert (
        resolve_model_path(value)
        == ServeConfig(data_dir=tmp_path, model_path=value).model_file
        == BUNDLED_MODEL
    )


def test_cli_and_service_take_a_file_and_refuse_an_unknown_name_alike(tmp_path):
    own = tmp_path / "mine.pt"
    own.write_bytes(b"not read here")
    assert resolve_model_path(own) == ServeConfig(data_dir=tmp_path, model_path=own).model_file == own
    for resolve in (resolve_model_path, lambda v: ServeConfig(data_dir=tmp_path, model_path=v).model_file):
        with pytest.raises(UnknownModelError, match="nih-default-compact"):
            resolve("no-such-model")


def test_only_models_published_knows_the_bundled_models_place():
    owners = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if '"default_model"' in path.read_text(encoding="utf-8")
    ]
    assert owners == ["models/published.py"]
    assert resolve_model(None) == BUNDLED_MODEL
