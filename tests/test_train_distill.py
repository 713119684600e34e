"""Knowledge distillation from saved teacher predictions (``distill:`` in a training config)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from train_support import make_data, single_thread, tiny_config  # noqa: F401 - fixture
from xraytriage.data import CSVDataset
from xraytriage.data.base import RadiographDataset
from xraytriage.errors import ConfigError
from xraytriage.train.config import DistillConfig, TrainConfig
from xraytriage.train.distill import SoftTargets, build_soft_targets, read_teacher, teacher_matrix
from xraytriage.train.trainer import Trainer


def _teacher_csv(path: Path, images: list[str], probs: dict[str, list[float]]) -> Path:
    frame = pd.DataFrame({"Image Index": images, **{f"prob_{k}": v for k, v in probs.items()}})
    frame.to_csv(path, index=False)
    return path


def test_blended_target_is_the_mix_of_the_two_cross_entropies():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 2, (6, 3)), dtype=torch.float32)
    labels[0, 1] = float("nan")  # unknown label: stays unknown
    teacher = rng.uniform(0.01, 0.99, (6, 3)).astype(np.float32)
    teacher[4:] = np.nan  # rows without a teacher prediction
    teacher[1, 2] = np.nan  # a finding the teacher does not predict
    soft = SoftTargets(teacher, weight=0.3)
    index = torch.arange(6)
    mixed = soft.blend(labels, index)
    logits = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32)
    for i, j in [(0, 0), (2, 1), (3, 2)]:
        want = 0.7 * F.binary_cross_entropy_with_logits(logits[i, j], labels[i, j]) + 0.3 * (
            F.binary_cross_entropy_with_logits(logits[i, j], torch.tensor(teacher[i, j]))
        )
        got = F.binary_cross_entropy_with_logits(logits[i, j], mixed[i, j])
        assert torch.isclose(got, want, atol=1e-6)
    assert torch.isnan(mixed[0, 1])
    assert torch.equal(mixed[4:], labels[4:]) and mixed[1, 2] == labels[1, 2]
    # rows are looked up by dataset index, not batch position
    assert torch.equal(soft.blend(labels[[5, 2]], torch.tensor([5, 2])), mixed[[5, 2]])


def test_teacher_file_is_matched_by_file_name_and_label_spelling(tmp_path):
    names = [f"{i:08d}_000.png" for i in range(12)]
    table = pd.DataFrame({
        "path": [str(tmp_path / "images" / n) for n in names], "patient_id": [str(i // 2) for i in range(12)],
        "study_id": names, "view": "PA",
    })  # fmt: skip
    dataset = RadiographDataset(table, np.zeros((12, 3)), ["Mass", "Pleural Thickening", "No Finding"])
    teacher = _teacher_csv(
        tmp_path / "t.csv",
        [f"some/dir/{names[3]}", names[7], "not_in_the_dataset.png"],
        {"Mass": [0.9, 0.2, 0.5], "Pleural_Thickening": [0.1, 0.4, 0.5]},
    )
    matrix = teacher_matrix(dataset, dataset.label_names, read_teacher(teacher))
    assert matrix.shape == (len(dataset), 3)
    np.testing.assert_allclose(matrix[3, :2], [0.9, 0.1])
    np.testing.assert_allclose(matrix[7, :2], [0.2, 0.4])
    assert np.isnan(matrix[:, 2]).all()  # No Finding: the teacher has no such output
    assert np.isfinite(matrix).any(axis=1).sum() == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x,prob_Mass\na.png,0.5\n", "no image column"),
        ("Image Index,Mass\na.png,0.5\n", "no prob_"),
        ("Image Index,prob_Mass\na.png,1.5\n", "outside [0, 1]"),
        ("Image Index,prob_Mass\na.png,0.5\ndir/a.png,0.2\n", "more than once"),
    ],
)
def test_a_bad_teacher_file_is_named_with_its_problem(tmp_path, content, message):
    path = tmp_path / "teacher.csv"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"teacher\.csv") as err:
        read_teacher(path)
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        read_teacher(tmp_path / "missing.csv")


def test_off_unless_configured_and_refused_when_no_training_image_matches(tmp_path):
    csv = make_data(tmp_path / "d", n_images=8, size=16, n_patients=4)
    dataset = CSVDataset(csv, labels=["Mass"])
    assert build_soft_targets(DistillConfig(), dataset, ["Mass"]) is None
    teacher = _teacher_csv(tmp_path / "t.csv", ["other.png"], {"Mass": [0.5]})
    assert build_soft_targets(DistillConfig(predictions=str(teacher), weight=0.0), dataset, ["Mass"]) is None
    with pytest.raises(ConfigError, match="none of the 8 training images"):
        build_soft_targets(DistillConfig(predictions=str(teacher)), dataset, ["Mass"])
    with pytest.raises(ConfigError, match=r"distill\.weight"):
        TrainConfig.from_dict(tiny_config(csv, distill={"predictions": str(teacher), "weight": 1.5}))


def _first_step_loss(csv: Path, tmp_path: Path, distill: dict | None) -> float:
    labels = ["Mass", "Effusion", "No Finding"]
    config = TrainConfig.from_dict(
        tiny_config(
            csv,
            data={"options": {"csv": str(csv), "labels": labels}},
            **({"distill": distill} if distill else {}),
        )
    )
    dataset = CSVDataset(csv, labels=labels)
    trainer = Trainer(
        config, dataset, dataset.subset([]), tmp_path / f"run{len(list(tmp_path.iterdir()))}", source=None
    )
    return trainer._train_epoch(0, trainer.train_loader)[0]


def test_training_uses_the_teacher_in_the_loss(tmp_path):
    """Same seed, same first batch: a teacher that agrees with the labels changes nothing, one
    that contradicts them (with full weight) raises the loss of the untrained network."""
    csv = make_data(tmp_path / "d", n_images=24, size=32, n_patients=12)
    dataset = CSVDataset(csv, labels=["Mass", "Effusion", "No Finding"])
    names = [Path(p).name for p in dataset.paths]
    agree = _teacher_csv(tmp_path / "agree.csv", names, {
        "Mass": dataset.labels[:, 0].tolist(), "Effusion": dataset.labels[:, 1].tolist(),
    })  # fmt: skip
    contradict = _teacher_csv(tmp_path / "contra.csv", names, {
        "Mass": (1 - dataset.labels[:, 0]).tolist(), "Effusion": (1 - dataset.labels[:, 1]).tolist(),
    })  # fmt: skip
    runs = tmp_path / "runs"
    runs.mkdir()
    plain = _first_step_loss(csv, runs, None)
    same = _first_step_loss(csv, runs, {"predictions": str(agree), "weight": 1.0})
    flipped = _first_step_loss(csv, runs, {"predictions": str(contradict), "weight": 1.0})
    assert same == pytest.approx(plain, abs=1e-6)
    assert flipped > plain + 0.05


def test_the_chexnet_anchor_predictions_match_nih_images(shared_data):
    """The shipped recipe's teacher: every anchor row names an image of the NIH folder."""
    from xraytriage.data.registry import load_dataset

    anchors = shared_data / "anchors" / "chexnet_reproduction_preds.csv"
    nih = load_dataset("nih", root=str(shared_data / "nih"))
    teacher = read_teacher(anchors)
    matrix = teacher_matrix(nih, nih.label_names, teacher)
    matched = int(np.isfinite(matrix).any(axis=1).sum())
    names = set(nih.table["path"].map(lambda p: Path(p).name))
    assert matched == len(set(teacher.index) & names) == len(teacher)
    findings = [j for j, n in enumerate(nih.label_names) if n in teacher.columns]
    assert len(findings) == teacher.shape[1]  # all 14 findings found under their NIH names
    assert np.isnan(matrix[:, [j for j in range(len(nih.label_names)) if j not in findings]]).all()
