"""The model's clinical scope: what the checkpoint says it reads, and which headers fall outside."""

from __future__ import annotations

import pydicom
import pytest

from xraytriage.cli.common import default_model_path
from xraytriage.models.checkpoint import Checkpoint, load_checkpoint
from xraytriage.scope import CHEST_SCOPE, default_scope, low_resolution_warning, scope_problem


def test_the_bundled_model_reads_frontal_chest_radiographs() -> None:
    """The default for NIH-trained checkpoints, plus the ages it was trained on (issue 22)."""
    checkpoint = load_checkpoint(default_model_path())
    assert {k: v for k, v in checkpoint.scope.items() if k != "age_years"} == CHEST_SCOPE


def test_scope_round_trips_and_older_checkpoints_get_a_default() -> None:
    checkpoint = load_checkpoint(default_model_path())
    data = checkpoint.to_dict()
    assert data["scope"] == {**CHEST_SCOPE, "age_years": checkpoint.scope["age_years"]}
    data["scope"] = {"body_parts": ["HAND", "WRIST"], "views": []}
    assert Checkpoint.from_dict(data).scope == {"body_parts": ["HAND", "WRIST"], "views": []}
    del data["scope"]
    assert Checkpoint.from_dict(data).scope == CHEST_SCOPE
    assert default_scope(["Abnormal"], {"data": {"kind": "mura"}})["body_parts"][3] == "HAND"
    assert default_scope(["Abnormal"], {}) == {}  # unknown: nothing is refused


@pytest.mark.parametrize(
    ("body_part", "view", "problem"),
    [
        ("CHEST", "PA", None),
        ("CHEST", "AP", None),
        ("THORAX", "AP", None),
        ("", "", None),  # no information: cannot be judged
        ("HAND", "", "body part HAND (BodyPartExamined)"),
        ("CHEST", "LL", "view LL, left lateral (ViewPosition)"),
        ("SKULL", "LATERAL", "body part SKULL (BodyPartExamined) and view LATERAL, left lateral"),
    ],
)
def test_scope_problem_reads_dicom_headers_and_metadata(body_part, view, problem) -> None:
    ds = pydicom.Dataset()
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = view
    from_dataset = scope_problem(ds, {"body_parts": ["CHEST"], "views": ["PA", "AP"]})
    from_meta = scope_problem({"body_part": body_part, "view_position": view}, CHEST_SCOPE)
    assert from_dataset == from_meta
    if problem is None:
        assert from_dataset is None
    else:
        assert from_dataset.startswith("out of scope: " + problem)
        assert from_dataset.endswith("this model reads CHEST radiographs, PA or AP views only")
    assert scope_problem(ds, {}) is None


def test_low_resolution_warning() -> None:
    assert (
        low_resolution_warning(64, 64, 128)
        == "low resolution: 64x64 px, smaller than the model's 128 px input"
    )
    assert low_resolution_warning(256, 256, 128) is None
    assert low_resolution_warning(None, None, 128) is None
