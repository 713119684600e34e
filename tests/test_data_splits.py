"""Patient-grouped splits: no patient crosses, reproducible, seed-dependent, stratified."""

from __future__ import annotations

import numpy as np
import pytest

from xraytriage.data import (
    CSVDataset,
    NIHChestXray14Dataset,
    PatientLeakError,
    assert_patient_disjoint,
    kfold_indices,
    patient_kfold,
    split_dataset,
    train_val_test_split,
)
from xraytriage.data.splits import group_split, stratification_key
from xraytriage.errors import ConfigError


@pytest.fixture(scope="module")
def nih(shared_data):
    root = shared_data / "nih"
    return NIHChestXray14Dataset(
        [root / "images", root / "images-64", root / "fullres"],
        root / "meta" / "Data_Entry_2017_v2020.csv.gz",
    )


@pytest.fixture(scope="module")
def synthetic(synthetic_dir):
    return CSVDataset(synthetic_dir / "labels.csv")


def _patients(ds, idx):
    return set(ds.patient_ids[idx])


def test_train_val_test_never_shares_a_patient(nih):
    splits = train_val_test_split(nih, val=0.1, test=0.2, seed=0)
    assert set(splits) == {"train", "val", "test"}
    assert sum(len(v) for v in splits.values()) == len(nih)
    assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(len(nih)))
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not (_patients(nih, splits[a]) & _patients(nih, splits[b]))
    assert_patient_disjoint(splits, nih.patient_ids)


def test_fractions_are_respected(nih):
    splits = train_val_test_split(nih, val=0.1, test=0.2, seed=0)
    assert len(splits["test"]) / len(nih) == pytest.approx(0.2, abs=0.03)
    assert len(splits["val"]) / len(nih) == pytest.approx(0.1, abs=0.03)
    no_test = train_val_test_split(nih, val=0.25, test=0.0, seed=0)
    assert set(no_test) == {"train", "val"}


def test_reproducible_from_the_seed_and_seed_dependent(nih):
    a = train_val_test_split(nih, seed=7)
    b = train_val_test_split(nih, seed=7)
    c = train_val_test_split(nih, seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert _patients(nih, a["test"]) != _patients(nih, c["test"])


def test_stratification_balances_rare_findings(nih):
    folds = patient_kfold(nih, n_splits=5, seed=0)
    overall = (nih.labels == 1).mean(axis=0)
    for k in range(5):
        rate = (nih.labels[folds == k] == 1).mean(axis=0)
        assert np.abs(rate - overall).max() < 0.05
    hernia = nih.label_names.index("Hernia")
    per_fold = [int((nih.labels[folds == k, hernia] == 1).sum()) for k in range(5)]
    assert min(per_fold) >= 2  # 22 Hernia images spread over every fold


def test_stratified_beats_unstratified_on_the_rare_label(nih):
    """Same grouping, with and without stratification: the stratified folds are more even."""
    hernia = nih.label_names.index("Hernia")

    def spread(mode):
        values = []
        for seed in range(5):
            folds = patient_kfold(nih, 5, seed=seed, stratify=mode)
            counts = [(nih.labels[folds == k, hernia] == 1).sum() for k in range(5)]
            values.append(np.std(counts))
        return float(np.mean(values))

    assert spread("rarest") < spread("none")


def test_kfold_covers_every_image_once(synthetic):
    pairs = kfold_indices(synthetic, n_splits=4, seed=1)
    val = np.concatenate([v for _, v in pairs])
    assert np.array_equal(np.sort(val), np.arange(len(synthetic)))
    for train, v in pairs:
        assert not (_patients(synthetic, train) & _patients(synthetic, v))
        assert len(train) + len(v) == len(synthetic)
    assert_patient_disjoint(patient_kfold(synthetic, 4, seed=1), synthetic.patient_ids)


def test_split_dataset_returns_datasets(synthetic):
    parts = split_dataset(synthetic, val=0.2, test=0.2, seed=0)
    assert sum(len(p) for p in parts.values()) == len(synthetic)
    assert_patient_disjoint(parts)


def test_leak_is_reported_clearly(synthetic):
    pid = synthetic.patient_ids
    shared = np.flatnonzero(pid == pid[0])
    assert len(shared) >= 2
    with pytest.raises(PatientLeakError, match=pid[0]):
        assert_patient_disjoint({"train": shared[:1], "test": shared[1:]}, pid)
    folds = np.zeros(len(synthetic), dtype=int)
    folds[shared[0]] = 1
    with pytest.raises(PatientLeakError, match="more than one split"):
        assert_patient_disjoint(folds, pid)


def test_stratification_key_modes():
    labels = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 0], [1, np.nan, 0]], dtype=np.float32)
    names = ["A", "B", "No Finding"]
    rarest = stratification_key(labels, names, "rarest")
    assert rarest[0] != rarest[1] and rarest[1] == rarest[3]  # row 0's rarest positive is "No Finding"
    abnormal = stratification_key(labels, names, "abnormal")
    assert list(abnormal) == [1, 1, 0, 1]
    with pytest.raises(ConfigError):
        stratification_key(labels, names, "sideways")


def test_bad_parameters(synthetic):
    with pytest.raises(ConfigError):
        train_val_test_split(synthetic, val=0.6, test=0.5)
    with pytest.raises(ConfigError):
        patient_kfold(synthetic, n_splits=1)
    with pytest.raises(ConfigError):
        group_split(["a", "b"], np.zeros(2), [0, 0])
