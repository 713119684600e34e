"""FracAtlas on its real files: labels, group as patient key, resolution kinds, boxes, the
truncated JPEGs, and MURA-style study aggregation + kappa on real pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xraytriage.errors import ConfigError, ImageReadError, MissingFileError


@pytest.fixture(scope="module")
def fracatlas(shared_data):
    from xraytriage.data.registry import load_dataset

    return load_dataset("fracatlas", root=str(shared_data / "msk" / "fracatlas"))


@pytest.fixture(scope="module")
def csv_table(shared_data) -> pd.DataFrame:
    return pd.read_csv(shared_data / "msk" / "fracatlas" / "dataset.csv")


def test_every_listed_image_is_loaded_with_its_labels(fracatlas, csv_table):
    assert len(fracatlas) == len(csv_table)
    assert fracatlas.label_names == ["Fracture", "Abnormal"]
    by_id = csv_table.set_index("image_id")
    expected = by_id.loc[fracatlas.table["image_id"], "fractured"].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(fracatlas.labels[:, 0], expected)
    np.testing.assert_array_equal(fracatlas.labels[:, 1], expected)
    assert all(Path(p).is_file() for p in fracatlas.paths[:50])
    assert fracatlas.missing == 0


def test_group_is_the_patient_key_and_folds_never_share_one(fracatlas):
    from xraytriage.data.splits import assert_patient_disjoint, patient_kfold

    assert (fracatlas.table["patient_id"] == fracatlas.table["group"]).all()
    folds = patient_kfold(fracatlas, 3, seed=0)
    assert_patient_disjoint(folds, fracatlas.patient_ids)
    for group, rows in fracatlas.table.groupby("group").groups.items():
        assert len(set(folds[np.asarray(rows)])) == 1, group


def test_resolution_kind_is_the_collection(fracatlas, csv_table):
    longer = csv_table[["width", "height"]].max(axis=1)
    by_id = dict(zip(csv_table["image_id"], longer > 1000, strict=True))
    large = fracatlas.table["image_id"].map(by_id).to_numpy()
    assert (
        fracatlas.table["collection"].to_numpy() == np.where(large, "fracatlas-large", "fracatlas-small")
    ).all()
    info = fracatlas.describe()
    kinds = info["resolution_kinds"]
    assert kinds["large"]["images"] + kinds["small"]["images"] == len(fracatlas)
    assert kinds["large"]["fractured"] == int(fracatlas.labels[large, 0].sum())
    # the large files were reduced to 1024 px on the long side: check one on disk
    from PIL import Image

    path = fracatlas.table.loc[large, "path"].iloc[0]
    with Image.open(path) as im:
        assert max(im.size) == 1024


def test_body_part_view_and_hardware_come_from_the_flags(fracatlas, csv_table):
    by_id = csv_table.set_index("image_id")
    for row in fracatlas.table.sample(40, random_state=0).itertuples():
        src = by_id.loc[row.image_id]
        parts = [p for p in ("hand", "leg", "hip", "shoulder") if src[p] == 1]
        assert row.body_part == "+".join(parts)
        assert row.hardware == src["hardware"]
        views = [v for v in ("frontal", "lateral", "oblique") if src[v] == 1]
        assert row.view == ("+".join(views) or "unknown")


def test_boxes_and_polygons_match_the_coco_file(fracatlas, shared_data):
    coco = json.loads((shared_data / "msk" / "fracatlas" / "annotations_coco.json").read_text())
    assert len(fracatlas.boxes) == len(coco["annotations"])
    boxes = fracatlas.boxes
    assert (boxes["x"] >= -1).all() and (boxes["x"] + boxes["w"] <= boxes["image_width"] + 1).all()
    assert (boxes["y"] >= -1).all() and (boxes["y"] + boxes["h"] <= boxes["image_height"] + 1).all()
    for row in boxes.head(30).itertuples():  # each polygon lies in its box
        xs, ys = np.asarray(row.polygon[0::2]), np.asarray(row.polygon[1::2])
        assert xs.min() >= row.x - 1 and xs.max() <= row.x + row.w + 1
        assert ys.min() >= row.y - 1 and ys.max() <= row.y + row.h + 1
    # box images are (almost all) labelled fractured; the one the README names is reported
    info = fracatlas.describe()
    assert "IMG0003298.jpg" in info["box_label_disagreements"]
    index = int(np.flatnonzero(fracatlas.table["image_id"] == boxes["image_index"].iloc[0])[0])
    assert len(fracatlas.boxes_for(index)) >= 1


def test_the_truncated_jpegs_are_reported_and_really_unreadable(fracatlas):
    from xraytriage.io import read_radiograph

    unreadable = fracatlas.unreadable_files()
    assert unreadable, "FracAtlas ships truncated JPEGs"
    assert all(name >= "IMG0004028" for name in unreadable)  # as the data README says
    path_of = dict(zip(fracatlas.table["image_id"], fracatlas.paths, strict=True))
    for name in list(unreadable)[:3]:
        with pytest.raises(ImageReadError):
            read_radiograph(path_of[name])
    readable = next(n for n in fracatlas.table["image_id"] if n >= "IMG0004028" and n not in unreadable)
    assert read_radiograph(path_of[readable]).pixels.size > 0


def test_filters_by_body_part_and_resolution(shared_data, fracatlas):
    from xraytriage.data.registry import load_dataset

    root = str(shared_data / "msk" / "fracatlas")
    hands = load_dataset("fracatlas", root=root, body_parts="hand", resolution="large")
    expected = fracatlas.table["body_part"].str.contains("hand") & (fracatlas.table["resolution"] == "large")
    assert len(hands) == int(expected.sum()) > 0
    assert set(hands.boxes["path"]) <= set(hands.paths)
    with pytest.raises(ConfigError, match="knee"):
        load_dataset("fracatlas", root=root, body_parts="knee")
    with pytest.raises(ConfigError, match="resolution"):
        load_dataset("fracatlas", root=root, resolution="huge")


def test_missing_root_csv_and_columns_name_the_file(tmp_path):
    from xraytriage.data.fracatlas import FracAtlasDataset

    with pytest.raises(MissingFileError, match="nowhere"):
        FracAtlasDataset(tmp_path / "nowhere")
    with pytest.raises(MissingFileError, match=r"dataset\.csv"):
        FracAtlasDataset(tmp_path)
    pd.DataFrame({"image_id": ["a.jpg"], "hand": [1]}).to_csv(tmp_path / "dataset.csv", index=False)
    with pytest.raises(ConfigError, match=r"dataset.csv: lacks FracAtlas column"):
        FracAtlasDataset(tmp_path)


def _mini_fracatlas(root: Path) -> None:
    """Six rows: a multiscan run of three hand images, one lone leg image, one file missing."""
    from PIL import Image

    rows = []
    for k, (part, multi, frac) in enumerate(
        [("hand", 1, 0), ("hand", 1, 1), ("hand", 1, 0), ("leg", 0, 0), ("leg", 1, 0), ("hip", 0, 1)]
    ):
        name = f"IMG{k:07d}.jpg"
        folder = "Fractured" if frac else "Non_fractured"
        if k != 5:
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 30), 50 + k * 20, np.uint8)).save(root / "images" / folder / name)
        flags = {p: int(p == part) for p in ("hand", "leg", "hip", "shoulder")}
        rows.append(
            {"image_id": name, **flags, "mixed": 0, "hardware": 0, "multiscan": multi, "fractured": frac,
             "fracture_count": frac, "frontal": 1, "lateral": 0, "oblique": 0, "folder": folder,
             "group": "block000", "width": 30, "height": 40, "resized": False}
        )  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "dataset.csv", index=False)


def test_multiscan_runs_become_multi_image_studies(tmp_path):
    from xraytriage.data.fracatlas import FracAtlasDataset

    _mini_fracatlas(tmp_path)
    data = FracAtlasDataset(tmp_path)
    assert data.listed == 6 and data.missing == 1 and len(data) == 5
    studies = data.studies().set_index("study_id")
    assert studies.loc["IMG0000000", "n_images"] == 3  # the hand run
    assert studies.loc["IMG0000000", "label"] == 1  # a study is fractured if any image is
    assert studies.loc["IMG0000003", "n_images"] == 1  # not multiscan
    assert studies.loc["IMG0000004", "n_images"] == 1  # multiscan, but another body part
    assert len(data.boxes) == 0  # no annotations file: no boxes, no error


def test_mura_study_aggregation_and_kappa_on_real_pixels(fracatlas):
    """The MURA code path (aggregate per study, then AUC / sensitivity / kappa) on FracAtlas's
    real multi-image studies, with a score read from the real pixels (mean intensity)."""
    from sklearn.metrics import cohen_kappa_score

    from xraytriage.evaluate.study import aggregate_studies, evaluate_studies
    from xraytriage.io import read_radiograph

    studies = fracatlas.studies()
    multi = studies[studies["n_images"] > 1]
    assert len(multi) >= 5
    rows = np.concatenate(multi["indices"].to_list())
    table = fracatlas.table.iloc[rows][["study_id", "patient_id", "path"]].copy()
    table["label"] = fracatlas.labels[rows, 0]
    table["p"] = [float(read_radiograph(p, max_side=128).pixels.mean()) for p in table["path"]]
    agg = aggregate_studies(table, ["p"], ["label"], method="max")
    assert len(agg) == len(multi) and (agg["images"] > 1).all()
    first = multi.iloc[0]
    assert agg.set_index("study_id").at[first["study_id"], "p"] == pytest.approx(
        table.loc[table["study_id"] == first["study_id"], "p"].max()
    )
    threshold = float(np.median(agg["p"]))
    result = evaluate_studies(table, "p", "label", threshold=threshold, methods=("mean", "max"))
    by_hand = cohen_kappa_score(agg["label"].astype(int), (agg["p"] >= threshold).astype(int))
    assert result["max"]["kappa"] == pytest.approx(by_hand)
    assert result["max"]["studies"] == len(multi)


@pytest.mark.slow
def test_datasets_inspect_shows_resolution_kinds_and_unreadable_files(shared_data, tmp_path, capsys):
    from xraytriage.cli.main import main

    out = tmp_path / "inspect.json"
    root = str(shared_data / "msk" / "fracatlas")
    assert main(["datasets", "inspect", "fracatlas", "--root", root, "--folds", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert set(report["resolution_kinds"]) == {"small", "large"}
    assert report["unreadable_files"] and all(n in printed for n in report["unreadable_files"])
    assert "resolution kinds" in printed and "unreadable files" in printed
    assert report["collections"].keys() == {"fracatlas-small", "fracatlas-large"}
    assert sum(s["images"] for s in report["splits"].values()) == report["images"]
