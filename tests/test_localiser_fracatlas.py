"""The localiser on FracAtlas's real fracture boxes: `localiser pack --dataset fracatlas` reads
the COCO boxes onto the films' input pixels with `group` as the patient, and `localiser cv`
trains and measures it out of fold without a group straddling two folds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xraytriage.cli.main import main

CONFIG = """
name: fracatlas-localiser-test
spec:
  findings: [Fracture]
  features: [8, 8, 16, 32, 64, 8]
  preprocess: {size: 64, resize: squash, intensity: clahe}
train:
  epochs: 1
  batch_size: 8
  folds: 2
  seed: 0
  threads: 1
"""


@pytest.fixture(scope="module")
def mini_fracatlas(shared_data, tmp_path_factory) -> Path:
    """A FracAtlas folder with a few real films of three groups: some with boxes (one with two
    boxes where there is one), some intact, copied with their rows and their COCO entries."""
    source = shared_data / "msk" / "fracatlas"
    table = pd.read_csv(source / "dataset.csv")
    coco = json.loads((source / "annotations_coco.json").read_text())
    boxes_per_file = pd.Series(
        [im["file_name"] for im in coco["images"] for a in coco["annotations"] if a["image_id"] == im["id"]]
    ).value_counts()
    small = table[(table["width"] < 1000) & (table["height"] < 1000)]
    groups = small[small["fractured"] == 1]["group"].value_counts().index[:3]
    picked = []
    for group in groups:
        rows = small[small["group"] == group]
        fractured = rows[rows["fractured"] == 1]
        multi = fractured[fractured["image_id"].map(boxes_per_file).fillna(0) > 1]
        picked += [multi.head(1), fractured.head(3), rows[rows["fractured"] == 0].head(2)]
    subset = pd.concat(picked).drop_duplicates("image_id")
    root = tmp_path_factory.mktemp("fracatlas")
    for row in subset.itertuples():
        (root / "images" / row.folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(
            source / "images" / row.folder / row.image_id, root / "images" / row.folder / row.image_id
        )
    subset.to_csv(root / "dataset.csv", index=False)
    keep = {int(im["id"]) for im in coco["images"] if im["file_name"] in set(subset["image_id"])}
    mini = {
        **coco,
        "images": [im for im in coco["images"] if int(im["id"]) in keep],
        "annotations": [a for a in coco["annotations"] if int(a["image_id"]) in keep],
    }
    (root / "annotations_coco.json").write_text(json.dumps(mini))
    (root / "localiser.yaml").write_text(CONFIG)
    return root


@pytest.fixture(scope="module")
def packed(mini_fracatlas) -> Path:
    out = mini_fracatlas / "boxes.npz"
    code = main(["localiser", "pack", "--dataset", "fracatlas", "--root", str(mini_fracatlas),
                 "--config", str(mini_fracatlas / "localiser.yaml"), "-o", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_pack_reads_every_fracture_box_onto_its_film_with_group_as_patient(mini_fracatlas, packed):
    from xraytriage.train.localiser import BoxData

    data = BoxData.load(packed)
    coco = json.loads((mini_fracatlas / "annotations_coco.json").read_text())
    images = {int(im["id"]): im for im in coco["images"]}
    expected = pd.DataFrame(
        [{"image": images[int(a["image_id"])]["file_name"], **dict(zip("xywh", a["bbox"], strict=True))}
         for a in coco["annotations"]]
    )  # fmt: skip
    table = pd.read_csv(mini_fracatlas / "dataset.csv").set_index("image_id")
    assert data.findings == ("Fracture",)
    assert sorted(data.names) == sorted(expected["image"].unique())  # only films with a box
    assert data.patients == [table.at[n, "group"] for n in data.names]
    assert len(data.boxes) == len(expected) and expected["image"].value_counts().max() > 1
    assert not data.ignore.any()  # every fractured film here has its box
    size = data.images.shape[-1]
    for r in data.boxes.itertuples():
        h, w = data.sizes[r.index]
        original = expected[(expected["image"] == data.names[r.index]) & np.isclose(expected["x"], r.x)]
        assert len(original) == 1 and np.isclose(original["w"].iloc[0], r.w)
        # squash resize: input box = original box scaled by size / side, on the same film
        assert r.x0 == pytest.approx(r.x * size / w, abs=1.0) and r.y1 == pytest.approx(
            (r.y + r.h) * size / h, abs=1.0
        )
        assert 0 <= r.x0 < r.x1 <= size and 0 <= r.y0 < r.y1 <= size


@pytest.mark.slow  # trains two fold models and bootstraps (about 30 s on 2 busy cores)
def test_localiser_cv_on_fracture_boxes_is_out_of_fold_by_group(mini_fracatlas, packed, tmp_path):
    out = tmp_path / "cv"
    code = main(["localiser", "cv", str(packed), "--config", str(mini_fracatlas / "localiser.yaml"),
                 "-o", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    folds = pd.read_csv(out / "folds.csv")
    assert folds.groupby("patient")["fold"].nunique().max() == 1
    assert folds["fold"].nunique() == 2
    table = pd.read_csv(out / "localization.csv")
    model = table[(table["source"] == "model") & (table["finding"] == "Fracture")]
    data_boxes = pd.read_csv(out / "localization_boxes.csv")
    assert (model["boxes"] == len(data_boxes)).all() and (
        model["images"] == data_boxes["image"].nunique()
    ).all()
    assert data_boxes.groupby("image")["patient"].nunique().max() == 1
    assert set(table["source"]) >= {"model", "random"}


def test_pack_arguments_say_what_is_missing(mini_fracatlas, tmp_path, capsys):
    config = str(mini_fracatlas / "localiser.yaml")
    assert (
        main(
            ["localiser", "pack", "--dataset", "fracatlas", "--config", config, "-o", str(tmp_path / "a.npz")]
        )
        == 2
    )
    assert "--root" in capsys.readouterr().err
    assert main(["localiser", "pack", "--config", config, "-o", str(tmp_path / "b.npz")]) == 2
    assert "--boxes" in capsys.readouterr().err
    wrong = tmp_path / "chest.yaml"
    wrong.write_text(CONFIG.replace("[Fracture]", "[Mass]"))
    code = main(["localiser", "pack", "--dataset", "fracatlas", "--root", str(mini_fracatlas),
                 "--config", str(wrong), "-o", str(tmp_path / "c.npz")])  # fmt: skip
    assert code == 2 and "Fracture" in capsys.readouterr().err
