"""CheXpert against the real train.csv (first rows; no images needed) plus generated pixels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xraytriage.data import CheXpertDataset, load_dataset
from xraytriage.data.chexpert import UNCERTAIN_CLASS, normalize_policy
from xraytriage.errors import ConfigError

NROWS = 3000


@pytest.fixture(scope="module")
def csv(shared_data):
    return shared_data / "chexpert" / "meta" / "chexpert_train.csv.gz"


@pytest.fixture(scope="module")
def raw(csv):
    return pd.read_csv(csv, nrows=NROWS)


def load(csv, **kw) -> CheXpertDataset:
    return CheXpertDataset(csv, nrows=NROWS, **kw)


def column(ds, name):
    return ds.labels[:, ds.label_names.index(name)]


def test_labels_patients_studies_views(csv, raw):
    ds = load(csv)
    assert len(ds) == NROWS
    assert "Effusion" in ds.label_names and "Pleural Effusion" not in ds.label_names
    assert ds.table.at[0, "patient_id"] == "patient00001"
    assert ds.table.at[1, "study_id"] == "patient00002/study2"
    assert ds.table["patient_id"].nunique() == raw["Path"].str.extract(r"(patient\d+)")[0].nunique()
    assert set(ds.table["view"]) <= {"AP", "PA", "LATERAL", "LL", "RL", "FRONTAL"}
    assert (ds.table.loc[ds.table["frontal_lateral"] == "Lateral", "view"] == "LATERAL").all()
    assert ds.paths[0].endswith("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")


def test_blank_is_unknown_and_uncertain_ignored_by_default(csv, raw):
    ds = load(csv)
    effusion = raw["Pleural Effusion"].to_numpy()
    got = column(ds, "Effusion")
    assert np.isnan(got[np.isnan(effusion)]).all()
    assert np.isnan(got[effusion == -1]).all()
    assert (got[effusion == 0] == 0).all()
    assert (got[effusion == 1] == 1).all()
    assert ds.uncertain_mask[:, ds.label_names.index("Effusion")].sum() == (effusion == -1).sum()


@pytest.mark.parametrize(
    ("policy", "value"), [("U-Zeros", 0.0), ("U-Ones", 1.0), ("U-MultiClass", UNCERTAIN_CLASS)]
)
def test_fixed_value_policies(csv, raw, policy, value):
    ds = load(csv, uncertainty=policy)
    uncertain = raw["Atelectasis"].to_numpy() == -1
    assert uncertain.sum() > 50
    assert (column(ds, "Atelectasis")[uncertain] == value).all()


def test_label_smoothing_ranges_and_seed(csv, raw):
    uncertain = raw["Edema"].to_numpy() == -1
    ones = column(load(csv, uncertainty="U-Ones-LSR", seed=1), "Edema")[uncertain]
    zeros = column(load(csv, uncertainty="U-Zeros-LSR", seed=1), "Edema")[uncertain]
    assert ((ones >= 0.55) & (ones <= 0.85)).all() and ones.std() > 0.05
    assert ((zeros >= 0.0) & (zeros <= 0.3)).all() and zeros.std() > 0.03
    again = column(load(csv, uncertainty="U-Ones-LSR", seed=1), "Edema")[uncertain]
    other = column(load(csv, uncertainty="U-Ones-LSR", seed=2), "Edema")[uncertain]
    assert np.array_equal(ones, again)
    assert not np.array_equal(ones, other)


def test_smoothing_does_not_depend_on_filters(csv):
    every = load(csv, uncertainty="U-Ones-LSR", seed=3)
    frontal = load(csv, uncertainty="U-Ones-LSR", seed=3, frontal_only=True)
    rows = every.table.index[every.table["frontal_lateral"] == "Frontal"]
    np.testing.assert_array_equal(every.labels[rows], frontal.labels)


def test_per_label_policies(csv, raw):
    ds = load(csv, uncertainty={"default": "U-Zeros", "Edema": "U-Ones", "pleural effusion": "ignore"})
    assert ds.policies["Edema"] == "U-Ones" and ds.policies["Effusion"] == "U-Ignore"
    assert ds.policies["Atelectasis"] == "U-Zeros"
    assert (column(ds, "Edema")[raw["Edema"].to_numpy() == -1] == 1).all()
    assert np.isnan(column(ds, "Effusion")[raw["Pleural Effusion"].to_numpy() == -1]).all()
    assert (column(ds, "Atelectasis")[raw["Atelectasis"].to_numpy() == -1] == 0).all()


def test_no_finding_is_consistent(csv):
    for policy in ("U-Ignore", "U-Ones"):
        ds = load(csv, uncertainty=policy)
        disease = [j for j, n in enumerate(ds.label_names) if n not in ("No Finding", "Support Devices")]
        any_positive = (ds.labels[:, disease] == 1).any(axis=1)
        assert (column(ds, "No Finding")[any_positive] == 0).all()
        assert not ((column(ds, "No Finding") == 1) & any_positive).any()
    # U-Ones turns some "uncertain only" images into positive ones, so fewer No Finding=1
    assert (column(load(csv, uncertainty="U-Ones"), "No Finding") == 1).sum() <= (
        column(load(csv), "No Finding") == 1
    ).sum()


def test_drop_every_image_with_an_uncertain_label(csv, raw):
    ds = load(csv, drop_uncertain=True)
    labels = [c for c in raw.columns[5:]]
    expected = int((~(raw[labels] == -1).any(axis=1)).sum())
    assert len(ds) == expected
    assert ds.dropped_uncertain == NROWS - expected
    assert not ds.uncertain_mask.any()


def test_view_filters(csv, raw):
    assert len(load(csv, frontal_only=True)) == (raw["Frontal/Lateral"] == "Frontal").sum()
    pa = load(csv, views=["PA"])
    assert set(pa.table["view"]) == {"PA"} and len(pa) == (raw["AP/PA"] == "PA").sum()
    lateral = load(csv, views=["Lateral"])
    assert len(lateral) == (raw["Frontal/Lateral"] == "Lateral").sum()
    with pytest.raises(ConfigError, match="unknown view"):
        load(csv, views=["sideways"])


def test_uncertain_mask_follows_subsets_and_label_selection(csv):
    ds = load(csv, uncertainty="U-Ones")
    sub = ds.subset([1, 2, 3]).select_labels(["Edema", "Effusion"])
    j = [ds.label_names.index("Edema"), ds.label_names.index("Effusion")]
    np.testing.assert_array_equal(sub.uncertain_mask, ds.uncertain_mask[[1, 2, 3]][:, j])


def test_policy_names_and_errors():
    assert normalize_policy("ones") == "U-Ones"
    assert normalize_policy("u_zeros_lsr") == "U-Zeros-LSR"
    assert normalize_policy("U-MultiClass") == "U-MultiClass"
    with pytest.raises(ConfigError, match="unknown uncertainty policy"):
        normalize_policy("maybe")


def test_generated_pixels_at_listed_paths(tmp_path, csv):
    """The dataset reads images at the CSV's paths under ``root``."""
    ds = CheXpertDataset(csv, root=tmp_path, nrows=5)
    rng = np.random.default_rng(0)
    for rel in ds.table["relative_path"]:
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 32), dtype=np.uint8)).save(target, quality=95)
    image = ds.read(0)
    assert image.pixels.shape == (40, 32)
    # pointing root at the CheXpert-v1.0-small folder itself gives the same paths
    same = CheXpertDataset(csv, root=tmp_path / "CheXpert-v1.0-small", nrows=5)
    assert same.paths == ds.paths
    via_registry = load_dataset("chexpert", csv=str(csv), root=str(tmp_path), nrows=5, uncertainty="zeros")
    assert via_registry.paths == ds.paths


def test_maps_onto_the_nih_overlap(csv, shared_data):
    from xraytriage.data import NIHChestXray14Dataset
    from xraytriage.labels import CHEXPERT_NIH_OVERLAP

    chexpert = load(csv, uncertainty="U-Zeros").select_labels(CHEXPERT_NIH_OVERLAP)
    nih_root = shared_data / "nih"
    nih = NIHChestXray14Dataset(nih_root / "fullres", nih_root / "meta" / "Data_Entry_2017_v2020.csv.gz")
    nih = nih.select_labels(CHEXPERT_NIH_OVERLAP)
    assert chexpert.label_names == nih.label_names == list(CHEXPERT_NIH_OVERLAP)
    base = load(csv, uncertainty="U-Zeros")
    np.testing.assert_array_equal(
        chexpert.labels[:, chexpert.label_names.index("Effusion")], column(base, "Effusion")
    )
