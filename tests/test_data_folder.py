"""FolderDataset: class folders, binary normal/abnormal or one-hot multi-class, recursive."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from xraytriage.data import FolderDataset, load_dataset
from xraytriage.data.folder import class_name
from xraytriage.errors import ConfigError


def _write(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(path)


@pytest.fixture
def binary_root(tmp_path):
    for i in range(3):
        _write(tmp_path / "0_normal" / f"pA_{i}.png", i)
    for i in range(2):
        _write(tmp_path / "1_abnormal" / "nested" / f"pB_{i}.png", 10 + i)
    (tmp_path / "1_abnormal" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("loose file")
    return tmp_path


def test_class_name_drops_ordering_prefix():
    assert class_name("0_normal") == "normal"
    assert class_name("1-abnormal") == "abnormal"
    assert class_name("Mass") == "Mass"
    assert class_name("0") == "0"


def test_normal_abnormal_folders_become_one_binary_label(binary_root):
    ds = FolderDataset(binary_root)
    assert ds.binary and ds.label_names == ["Abnormal"]
    assert len(ds) == 5  # recursive; the .txt file is skipped
    by_folder = dict(zip(ds.table["class_folder"], ds.labels[:, 0], strict=True))
    assert by_folder == {"0_normal": 0.0, "1_abnormal": 1.0}
    assert ds.unassigned_files == 1
    assert ds.table["patient_id"].nunique() == 5  # without a pattern: one patient per image


def test_patient_pattern_groups_images(binary_root):
    ds = FolderDataset(binary_root, patient_pattern=r"(p[AB])_")
    assert sorted(ds.table["patient_id"].unique()) == ["pA", "pB"]
    with pytest.raises(ConfigError, match="does not match"):
        FolderDataset(binary_root, patient_pattern=r"(zzz)")


def test_other_class_names_are_one_hot(tmp_path):
    for k, name in enumerate(["Mass", "Nodule", "Effusion"]):
        for i in range(2):
            _write(tmp_path / name / f"{name}_{i}.png", 3 * k + i)
    ds = FolderDataset(tmp_path)
    assert not ds.binary
    assert ds.label_names == ["Effusion", "Mass", "Nodule"]  # sorted folder order
    assert (ds.labels.sum(axis=1) == 1).all()
    mass = ds.table["class_folder"] == "Mass"
    assert (ds.labels[mass.to_numpy(), ds.label_names.index("Mass")] == 1).all()
    assert ds.read(0).pixels.shape == (32, 32)


def test_two_non_normal_classes_stay_one_hot(tmp_path):
    _write(tmp_path / "cats" / "a.png")
    _write(tmp_path / "dogs" / "b.png")
    ds = FolderDataset(tmp_path)
    assert not ds.binary and ds.label_names == ["cats", "dogs"]
    with pytest.raises(ConfigError, match="binary=True"):
        FolderDataset(tmp_path, binary=True)


def test_errors_name_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        FolderDataset(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no class folders"):
        FolderDataset(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ConfigError, match="no image files"):
        FolderDataset(tmp_path)


def test_registry(binary_root):
    ds = load_dataset("folder", root=str(binary_root), patient_pattern=r"(p[AB])_")
    assert ds.label_names == ["Abnormal"] and ds.table["patient_id"].nunique() == 2


def test_real_pediatric_folders_give_abnormal_and_pneumonia_with_patients(shared_data):
    import pandas as pd

    from xraytriage.data import load_dataset

    root = shared_data / "pediatric"
    truth = pd.read_csv(root / "labels.csv")
    ds = load_dataset("folder", root=str(root), patient_pattern=r"(person\d+|IM-\d+)")
    assert ds.label_names == ["Abnormal", "Pneumonia"]
    assert len(ds) == len(truth)
    assert int(ds.labels[:, 1].sum()) == int((truth["label"] == "PNEUMONIA").sum())
    np.testing.assert_array_equal(ds.labels[:, 0], ds.labels[:, 1])
    by_file = dict(zip(truth["file"], truth["patient"].astype(str), strict=True))
    assert [by_file[r] for r in ds.table["relative_path"]] == ds.table["patient_id"].tolist()
