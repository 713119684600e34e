"""Cross-dataset evaluation on real pixels, and the training-image overlap warning.

The bundled NIH model scores the real pediatric class folders (Kermany et al. 2018) from the
CLI: NORMAL/PNEUMONIA become the labels Pneumonia and Abnormal, the only ones both sides have.
A folder that mixes pediatric images with NIH images the model was trained on makes the overlap
warning fire (and --exclude-training-images drop them); the pediatric images alone keep it silent.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from xraytriage.cli.common import default_model_path
from xraytriage.cli.main import main
from xraytriage.labels import NIH_FINDINGS, NO_FINDING

MODEL = default_model_path()
PATIENTS = r"(person\d+|IM-\d+|\d{8})"
"""Pediatric patients from the file names (personN_..., IM-NNNN-...); NIH: the 8-digit prefix."""
OVERLAP_LINE = "were used to train this model"

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"bundled model not installed ({MODEL})")


def evaluate(args: list[str], capsys) -> tuple[str, str]:
    assert main(["evaluate", "--model", str(MODEL), "--bootstrap", "50", "--quiet", *args]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.mark.slow
def test_pediatric_folder_is_scored_on_the_labels_both_sides_have(shared_data, tmp_path, capsys):
    root = shared_data / "pediatric"
    out = tmp_path / "eval"
    stdout, stderr = evaluate(
        ["--dataset", "folder", "--root", str(root), "--patient-pattern", PATIENTS, "--sample", "40",
         "--no-simulation", "--output", str(out)],
        capsys,
    )  # fmt: skip
    assert OVERLAP_LINE not in stdout + stderr  # the model never saw these children's images
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == ["Pneumonia", "Abnormal"]
    assert metrics["label_overlap"]["dataset_only"] == []
    assert set(metrics["label_overlap"]["model_only"]) == (set(NIH_FINDINGS) - {"Pneumonia"}) | {NO_FINDING}
    assert metrics["training_overlap"]["checked"] and metrics["training_overlap"]["overlapping"] == 0

    # ground truth from the real labels.csv; whole patients sampled
    truth = pd.read_csv(root / "labels.csv")
    truth["image"] = truth["file"].map(lambda f: f.split("/")[-1])
    preds = pd.read_csv(out / "predictions.csv").merge(truth, on="image", how="left")
    assert preds["label"].notna().all() and len(preds) >= 40
    expected = (preds["label"] == "PNEUMONIA").astype(float)
    assert (preds["label_Pneumonia"] == expected).all() and (preds["label_Abnormal"] == expected).all()
    sampled = truth[truth["patient"].isin(set(preds["patient"]))]
    assert len(sampled) == len(preds)  # every image of a sampled patient is in
    assert 0 < expected.sum() < len(expected)
    for label in ("Pneumonia", "Abnormal"):
        auc = roc_auc_score(expected, preds[f"prob_{label}"])
        assert metrics["metrics"]["labels"][label]["auc"] == pytest.approx(auc)

    # means named by what they average; none of them claims the 14 NIH findings
    assert "mean_auc_14_findings" not in (out / "metrics.json").read_text()
    assert metrics["means"]["mean_auc_2_labels"]["labels"] == ["Pneumonia", "Abnormal"]
    assert "mean_auc_2_labels" in stdout
    provenance = metrics["provenance"]
    assert provenance["checkpoint_sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()[:16]
    assert provenance["images"] == len(preds) and provenance["patients"] == preds["patient"].nunique()
    assert "--sample 40" in provenance["command"] and "sample" in provenance


def _mixed_folder(shared_data, root, per_class: int = 3):
    """NORMAL/ and PNEUMONIA/ with real pediatric images and real NIH images of the same
    class (No Finding / Pneumonia) that the bundled model was trained on (copies: the folder
    dataset resolves links)."""
    entries = pd.read_csv(shared_data / "nih" / "meta" / "Data_Entry_2017_v2020.csv.gz")
    present = {p.name for p in (shared_data / "nih" / "images-c").glob("*.png")}
    entries = entries[entries["Image Index"].isin(present)].sort_values("Image Index")
    nih = {
        "NORMAL": entries[entries["Finding Labels"] == "No Finding"]["Image Index"].head(per_class),
        "PNEUMONIA": entries[entries["Finding Labels"].str.contains("Pneumonia")]["Image Index"].head(
            per_class
        ),
    }
    pediatric = pd.read_csv(shared_data / "pediatric" / "labels.csv")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for name in nih[cls]:
            shutil.copy(shared_data / "nih" / "images-c" / name, root / cls / name)
        for rel in pediatric[pediatric["label"] == cls]["file"].head(per_class):
            shutil.copy(shared_data / "pediatric" / rel, root / cls)
    return [name for cls in nih for name in nih[cls]]


@pytest.mark.slow
def test_overlap_with_training_images_warns_and_can_be_excluded(shared_data, tmp_path, capsys):
    root = tmp_path / "mixed"
    nih_names = _mixed_folder(shared_data, root)
    n_nih, n_all = len(nih_names), 2 * len(nih_names)
    common = ["--dataset", "folder", "--root", str(root), "--patient-pattern", PATIENTS]

    out = tmp_path / "with"
    stdout, stderr = evaluate([*common, "--output", str(out)], capsys)
    line = f"{n_nih} of {n_all} evaluated images ({n_nih / n_all:.1%}) {OVERLAP_LINE}"
    assert line in stderr.replace("\n", " ")
    overlap = json.loads((out / "metrics.json").read_text())["training_overlap"]
    assert overlap["overlapping"] == n_nih and overlap["evaluated_images"] == n_all
    assert set(overlap["examples"]) <= set(nih_names)
    page = (out / "report.html").read_text()
    assert "class='warning'" in page and OVERLAP_LINE in page
    assert f"{n_nih} of {n_all} images" in page  # the header's "seen in training" row

    out = tmp_path / "without"
    stdout, stderr = evaluate([*common, "--exclude-training-images", "--output", str(out)], capsys)
    assert f"excluded {n_nih} of {n_all} images the model was trained on" in stdout
    assert OVERLAP_LINE not in stdout + stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == n_all - n_nih
    assert (
        metrics["training_overlap"]["overlapping"] == 0 and metrics["training_overlap"]["excluded"] == n_nih
    )
    predicted = set(pd.read_csv(out / "predictions.csv")["image"])
    assert not predicted & set(nih_names)
    assert OVERLAP_LINE not in (out / "report.html").read_text()
