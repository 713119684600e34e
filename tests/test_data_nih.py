"""NIH ChestX-ray14 against the real metadata and images in ../shared/data/nih."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import count_nih_folders
from xraytriage.data import NIHChestXray14Dataset, load_dataset
from xraytriage.data.nih import BOX_COLLECTION_SUFFIX, NIH_LABELS, read_bbox_list
from xraytriage.errors import ConfigError

N_LISTED = 112_120
STARTER_FOLDERS = ["images", "images-64", "fullres"]


@pytest.fixture(scope="module")
def nih_root(shared_data):
    return shared_data / "nih"


@pytest.fixture(scope="module")
def nih(nih_root):
    meta = nih_root / "meta"
    return NIHChestXray14Dataset(
        [nih_root / "images", nih_root / "images-64", nih_root / "fullres"],
        meta / "Data_Entry_2017_v2020.csv.gz",
        meta / "BBox_List_2017.csv.gz",
    )


@pytest.fixture(scope="module")
def expected(nih_root):
    return count_nih_folders(nih_root, STARTER_FOLDERS)


def test_keeps_only_found_images_and_counts_missing(nih, expected):
    assert len(nih) == expected["images"] > 0
    assert nih.listed == N_LISTED == expected["listed"]
    assert nih.missing == N_LISTED - expected["images"]
    assert len(nih.missing_names) == nih.missing
    assert nih.describe()["missing_files"] == nih.missing
    assert all(p.endswith(".png") for p in nih.paths)


def test_single_folder_reports_the_rest_missing(nih_root):
    one = NIHChestXray14Dataset(nih_root / "fullres", nih_root / "meta" / "Data_Entry_2017_v2020.csv.gz")
    assert len(one) == 12
    assert one.missing == N_LISTED - 12


def test_labels_patients_and_metadata(nih, expected):
    assert nih.label_names == list(NIH_LABELS)
    assert "Pleural Thickening" in nih.label_names and "Pleural_Thickening" not in nih.label_names
    assert nih.table["patient_id"].nunique() == expected["patients"]
    assert int(nih.labels[:, nih.label_names.index("No Finding")].sum()) == expected["no_finding"]
    assert not np.isnan(nih.labels).any()
    row = nih.table.index[nih.table["image_index"] == "00000001_001.png"][0]
    positives = {n for n, v in zip(nih.label_names, nih.labels[row], strict=True) if v == 1}
    assert positives == {"Cardiomegaly", "Emphysema"}
    assert nih.table.at[row, "patient_id"] == "00000001"
    assert nih.table.at[row, "view"] == "PA"
    assert nih.table.at[row, "sex"] == "M" and nih.table.at[row, "age"] == 58
    # No Finding is exclusive with every finding
    findings = nih.labels[:, : len(NIH_LABELS) - 1]
    assert np.array_equal(nih.labels[:, -1] == 1, findings.sum(axis=1) == 0)


def test_view_filter(nih_root):
    meta = nih_root / "meta"
    pa = NIHChestXray14Dataset(nih_root / "images", meta / "Data_Entry_2017_v2020.csv.gz", views=["PA"])
    every = NIHChestXray14Dataset(nih_root / "images", meta / "Data_Entry_2017_v2020.csv.gz", views=None)
    assert set(pa.table["view"]) == {"PA"}
    assert len(pa) + pa.excluded_by_view == len(every) == 833
    assert 0 < len(pa) < len(every)


def test_boxes_are_scaled_to_the_real_image_size(nih, nih_root):
    raw = read_bbox_list(nih_root / "meta" / "BBox_List_2017.csv.gz")
    assert len(raw) == 984
    assert "Infiltration" in set(raw["finding"]) and "Infiltrate" not in set(raw["finding"])
    boxes = nih.boxes
    assert len(boxes) == 553  # the boxes of images in images/ (256 px)
    assert set(boxes["image_width"]) == {256}
    one = boxes.iloc[0]
    original = raw[(raw["image_index"] == one["image_index"]) & (raw["finding"] == one["finding"])].iloc[0]
    for col in ("x", "y", "w", "h"):
        assert one[col] == pytest.approx(original[col] * 256 / 1024)
    assert (boxes["x"] + boxes["w"] <= 256 + 1e-6).all() and (boxes["y"] + boxes["h"] <= 256 + 1e-6).all()
    # the finding of a box is one of the image's labels
    for _, box in boxes.head(50).iterrows():
        i = nih.paths.index(box["path"])
        assert nih.labels[i, nih.label_names.index(box["finding"])] == 1


def test_boxes_follow_a_subset(nih):
    with_box = nih.paths.index(nih.boxes.iloc[0]["path"])
    sub = nih.subset([with_box, 0])
    assert set(sub.boxes["path"]) <= set(sub.paths)
    assert (
        len(sub.boxes)
        == (nih.boxes["path"] == nih.paths[with_box]).sum() + (nih.boxes["path"] == nih.paths[0]).sum()
    )
    assert len(nih.boxes_for(with_box)) >= 1


def test_boxes_scale_with_a_resized_copy(tmp_path, nih_root):
    """The same image at 512 px gets boxes twice as large as at 256 px."""
    meta = nih_root / "meta"
    name = "00014716_007.png"
    Image.open(nih_root / "images" / name).resize((512, 512)).save(tmp_path / name)
    small = NIHChestXray14Dataset(
        nih_root / "images", meta / "Data_Entry_2017_v2020.csv.gz", meta / "BBox_List_2017.csv.gz"
    )
    big = NIHChestXray14Dataset(
        tmp_path, meta / "Data_Entry_2017_v2020.csv.gz", meta / "BBox_List_2017.csv.gz"
    )
    a = small.boxes[small.boxes["image_index"] == name][["x", "y", "w", "h"]].to_numpy()
    b = big.boxes[["x", "y", "w", "h"]].to_numpy()
    assert len(b) >= 1
    np.testing.assert_allclose(b, 2 * a)


def test_official_split_files(tmp_path, nih_root, nih):
    names = nih.table["image_index"].tolist()
    train, test = tmp_path / "train_val_list.txt", tmp_path / "test_list.txt"
    train.write_text("\n".join(names[:100]) + "\n")
    test.write_text("\n".join([*names[100:150], "99999999_000.png"]) + "\n")
    entry = nih_root / "meta" / "Data_Entry_2017_v2020.csv.gz"
    folders = [nih_root / "images", nih_root / "images-64", nih_root / "fullres"]
    only_test = NIHChestXray14Dataset(folders, entry, split_file=test)
    assert sorted(only_test.table["image_index"]) == sorted(names[100:150])
    assert only_test.listed == 50  # the unknown name is not in Data_Entry at all
    both = NIHChestXray14Dataset(folders, entry, split_file={"train": train, "test": test})
    assert both.table["split"].value_counts().to_dict() == {"train": 100, "test": 50}


def test_registry_discovers_the_layout(nih_root):
    ds = load_dataset("nih", root=str(nih_root))
    every = count_nih_folders(nih_root)  # every subfolder but meta/ is a collection and counts
    assert len(ds) == every["images"] and len(ds.boxes) == every["boxes"]
    assert set(every["folders"]) >= {"images", "images-64", "images-b", "images-c"}
    pa = load_dataset("nih", images=[str(nih_root / "images")], meta=str(nih_root / "meta"), views="PA")
    assert set(pa.table["view"]) == {"PA"}
    with_abnormal = load_dataset("nih", root=str(nih_root), labels=["Mass"], abnormal=True)
    assert with_abnormal.label_names == ["Mass", "Abnormal"]
    # Abnormal is derived from every finding, not only the kept ones
    no_finding = ds.labels[:, ds.label_names.index("No Finding")]
    assert np.array_equal(with_abnormal.labels[:, 1], 1 - no_finding)


def test_clear_errors(tmp_path, nih_root):
    with pytest.raises(ConfigError, match="not found"):
        NIHChestXray14Dataset(tmp_path / "nope", nih_root / "meta" / "Data_Entry_2017_v2020.csv.gz")
    bad = tmp_path / "entry.csv"
    pd.DataFrame({"a": [1]}).to_csv(bad, index=False)
    with pytest.raises(ConfigError, match="column"):
        NIHChestXray14Dataset(nih_root / "fullres", bad)
    with pytest.raises(ConfigError, match="unknown option"):
        load_dataset("nih", root=str(nih_root), colour="red")
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        load_dataset("imagenet")


def test_every_image_carries_its_collection_and_box_images_are_their_own(nih_root):
    ds = load_dataset("nih", root=str(nih_root))
    every = count_nih_folders(nih_root)
    collection = ds.table["collection"]
    folder = collection.str.removesuffix(BOX_COLLECTION_SUFFIX)
    assert folder.value_counts().to_dict() == every["per_folder"]
    boxed = collection.str.endswith(BOX_COLLECTION_SUFFIX)
    assert int(boxed.sum()) == every["box_images"] == int(ds.table["has_box"].sum())
    # selected because abnormal: no box image is No Finding
    no_finding = ds.labels[:, ds.label_names.index("No Finding")] == 1
    assert not (no_finding & boxed.to_numpy()).any()
    report = ds.describe()
    assert sum(c["images"] for c in report["collections"].values()) == len(ds)
    assert any("images+box" in line and "only abnormal" in line for line in report["warnings"])
    assert not any("images-c" in line for line in report["warnings"])
    # a derived dataset keeps the column
    assert "collection" in ds.subset([0, 1]).table.columns
