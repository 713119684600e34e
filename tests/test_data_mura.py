"""MURA against the real validation CSVs, with generated pixels at the listed paths."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from xraytriage.data import MURADataset, load_dataset
from xraytriage.errors import ConfigError


@pytest.fixture(scope="module")
def meta(shared_data):
    return shared_data / "mura" / "meta"


@pytest.fixture(scope="module")
def mura(meta):
    return MURADataset(meta / "valid_image_paths.csv", meta / "valid_labeled_studies.csv")


def test_counts_and_labels_from_the_study_csv(mura, meta):
    studies = pd.read_csv(meta / "valid_labeled_studies.csv", header=None)
    images = pd.read_csv(meta / "valid_image_paths.csv", header=None)
    assert len(mura) == len(images) == 3197
    assert mura.table["study_id"].nunique() == len(studies) == 1201
    assert mura.label_names == ["Abnormal"]
    assert not np.isnan(mura.labels).any()
    # the study folder name says positive/negative; the CSV label agrees with it here
    folder_positive = mura.table["study_id"].str.endswith("_positive").to_numpy()
    assert np.array_equal(mura.labels[:, 0] == 1, folder_positive)


def test_body_part_patient_and_study(mura):
    row = mura.table.iloc[0]
    assert row["body_part"] == "XR_WRIST"
    assert row["patient_id"] == "patient11185"
    assert row["study_id"] == "XR_WRIST/patient11185/study1_positive"
    assert set(mura.table["body_part"]) == {
        "XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST"
    }  # fmt: skip


def test_study_grouping(mura):
    studies = mura.studies()
    assert len(studies) == 1201
    assert studies["n_images"].sum() == len(mura)
    for _, study in studies.head(30).iterrows():
        rows = mura.table.iloc[study["indices"]]
        assert set(rows["study_id"]) == {study["study_id"]}
        assert (mura.labels[study["indices"], 0] == study["label"]).all()
    codes = mura.study_codes()
    assert codes.max() + 1 == 1201


def test_study_scores_mean_and_max(mura):
    scores = np.arange(len(mura), dtype=float)
    per_study = mura.study_scores(scores, reduce="max").set_index("study_id")
    first = mura.studies().iloc[0]
    assert per_study.loc[first["study_id"], "score"] == scores[first["indices"]].max()
    mean = mura.study_scores(scores).set_index("study_id")
    assert mean.loc[first["study_id"], "score"] == pytest.approx(scores[first["indices"]].mean())
    with pytest.raises(ConfigError):
        mura.study_scores(scores, reduce="median")


def test_body_part_filter(meta):
    wrist = MURADataset(
        meta / "valid_image_paths.csv", meta / "valid_labeled_studies.csv", body_parts="wrist"
    )
    assert set(wrist.table["body_part"]) == {"XR_WRIST"} and len(wrist) == 659
    with pytest.raises(ConfigError, match="body part"):
        MURADataset(meta / "valid_image_paths.csv", meta / "valid_labeled_studies.csv", body_parts="knee")


def test_generated_pixels_and_registry(tmp_path, meta):
    ds = load_dataset("mura", root=str(meta.parent), body_parts=["XR_HUMERUS"])
    assert len(ds) == 288
    rooted = MURADataset(
        meta / "valid_image_paths.csv",
        meta / "valid_labeled_studies.csv",
        root=tmp_path,
        body_parts="humerus",
    )
    rng = np.random.default_rng(0)
    for rel in rooted.table["relative_path"].head(3):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(tmp_path / rel)
    assert rooted.read(0).pixels.shape == (48, 40)
    assert (
        MURADataset(
            meta / "valid_image_paths.csv", meta / "valid_labeled_studies.csv", root=tmp_path / "MURA-v1.1"
        ).paths[0]
        == MURADataset(
            meta / "valid_image_paths.csv", meta / "valid_labeled_studies.csv", root=tmp_path
        ).paths[0]
    )


def test_unlabelled_study_is_nan(tmp_path, meta):
    paths = tmp_path / "paths.csv"
    studies = tmp_path / "studies.csv"
    paths.write_text("MURA-v1.1/valid/XR_HAND/patient1/study1_negative/image1.png\n"
                     "MURA-v1.1/valid/XR_HAND/patient2/study1_positive/image1.png\n")  # fmt: skip
    studies.write_text("MURA-v1.1/valid/XR_HAND/patient1/study1_negative/,0\n")
    ds = MURADataset(paths, studies)
    assert ds.labels[0, 0] == 0 and np.isnan(ds.labels[1, 0])
    assert ds.unlabelled_images == 1
