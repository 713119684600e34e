"""Side by side with another model: the CheXNet reproduction's predictions on the NIH images here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from xraytriage.evaluate.compare import compare_predictions, join_predictions
from xraytriage.evaluate.metrics import multilabel_metrics
from xraytriage.evaluate.predictions import (
    attach_labels,
    label_matrix,
    prob_labels,
    prob_matrix,
    read_predictions_csv,
)
from xraytriage.labels import NIH_FINDINGS, canonical_label


@pytest.fixture(scope="module")
def anchor_csv(shared_data):
    return shared_data / "anchors" / "chexnet_reproduction_preds.csv"


@pytest.fixture(scope="module")
def nih(shared_data):
    from xraytriage.data.registry import load_dataset

    return load_dataset("nih", root=str(shared_data / "nih"))


@pytest.fixture(scope="module")
def anchor(anchor_csv, nih) -> pd.DataFrame:
    return attach_labels(read_predictions_csv(anchor_csv), nih)


@pytest.fixture(scope="module")
def data_entry_truth(shared_data) -> pd.DataFrame:
    """NIH labels parsed straight from Data_Entry (independent of the dataset classes)."""
    entries = pd.read_csv(shared_data / "nih" / "meta" / "Data_Entry_2017_v2020.csv.gz")
    findings = entries["Finding Labels"].str.split("|").map(lambda names: {canonical_label(n) for n in names})
    truth = pd.DataFrame({f: findings.map(lambda s, f=f: float(f in s)) for f in NIH_FINDINGS})
    truth["image"] = entries["Image Index"]
    truth["patient_id"] = entries["Patient ID"].astype(str)
    return truth


def anchor_rows(anchor_csv) -> int:
    """Rows of the anchor CSV, counted from the file itself (tests follow the data)."""
    return len(pd.read_csv(anchor_csv))


def test_anchor_csv_reads_with_harmonised_names(anchor_csv):
    frame = read_predictions_csv(anchor_csv)
    assert len(frame) == anchor_rows(anchor_csv) > 0
    assert prob_labels(frame) == list(NIH_FINDINGS)  # prob_Pleural_Thickening -> Pleural Thickening
    assert frame["image"].str.endswith(".png").all()


@pytest.mark.slow
def test_anchor_auc_on_the_shared_images_matches_sklearn(anchor, anchor_csv, data_entry_truth):
    # every anchor image is in the shared NIH folders
    assert len(anchor) == anchor_rows(anchor_csv)
    y, p = label_matrix(anchor, NIH_FINDINGS), prob_matrix(anchor, NIH_FINDINGS)
    result = multilabel_metrics(y, p, label_names=NIH_FINDINGS)
    joined = anchor[["image"]].merge(data_entry_truth, on="image")
    for name in NIH_FINDINGS:
        if joined[name].nunique() == 2:
            expected = roc_auc_score(
                joined[name], anchor.set_index("image").loc[joined["image"], f"prob_{name}"]
            )
            assert result["labels"][name]["auc"] == pytest.approx(expected)
        assert result["labels"][name]["positives"] == int(joined[name].sum())
    # an established model: clearly better than chance on every label with positives here
    assert 0.75 < result["macro"]["auc"] < 0.95
    assert all(m["auc"] > 0.6 for m in result["labels"].values() if np.isfinite(m["auc"]))


def test_comparison_joins_on_exactly_the_shared_images(anchor, anchor_csv):
    theirs = read_predictions_csv(anchor_csv)
    ours = anchor.iloc[:300].copy()
    extra = ours.iloc[:5].assign(image=[f"not_in_anchor_{i}.png" for i in range(5)])
    joined = join_predictions(pd.concat([ours, extra]), theirs)
    assert len(joined) == 300
    assert set(joined["image"]) == set(ours["image"])
    # the other model's probabilities line up image by image
    by_image = theirs.set_index("image")
    np.testing.assert_allclose(joined["other_prob_Mass"], by_image.loc[joined["image"], "prob_Mass"])


@pytest.mark.slow
def test_degraded_model_is_worse_than_the_anchor(anchor, anchor_csv):
    rng = np.random.default_rng(0)
    ours = anchor.copy()
    for name in NIH_FINDINGS:
        ours[f"prob_{name}"] = np.clip(ours[f"prob_{name}"] + rng.normal(0, 0.3, len(ours)), 0, 1)
    result = compare_predictions(ours, read_predictions_csv(anchor_csv), n_boot=200, seed=0)
    table = result["table"].set_index("label")
    assert result["images"] == anchor_rows(anchor_csv)
    assert (table["difference"].dropna() < 0).all()
    big = table.loc["Effusion"]
    assert big["delong_p"] < 0.01 and big["bootstrap_high"] < 0
    assert result["ours"]["macro"]["auc"] < result["other"]["macro"]["auc"]


def test_a_model_compared_with_itself_shows_no_difference(anchor, anchor_csv):
    result = compare_predictions(anchor, read_predictions_csv(anchor_csv), n_boot=50, seed=0)
    table = result["table"].dropna(subset=["difference"])
    assert (table["difference"] == 0).all()
    assert (table["delong_p"] == 1).all() and (table["bootstrap_p"] == 1).all()


@pytest.mark.slow
def test_evaluate_compares_the_triage_score_within_each_collection(anchor_csv, nih, shared_data, tmp_path):
    """The anchor against a degraded copy of itself, within each collection it has images in."""
    from xraytriage.cli.main import main

    rng = np.random.default_rng(0)
    noisy = pd.read_csv(anchor_csv)
    for col in [c for c in noisy.columns if c.startswith("prob_")]:
        noisy[col] = np.clip(noisy[col] + rng.normal(0, 0.25, len(noisy)), 0, 1)
    ours = tmp_path / "ours.csv"
    noisy.to_csv(ours, index=False)
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate", "--predictions", str(ours), "--dataset", "nih", "--root", str(shared_data / "nih"),
            "--group-by", "collection", "--compare-preds", str(anchor_csv), "--compare-name", "anchor",
            "--bootstrap", "20", "--no-simulation", "--output", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    table = pd.read_csv(out / "grouped_comparison.csv").set_index("group")
    in_anchor = nih.table["image_index"].isin(pd.read_csv(anchor_csv)["Image Index"])
    assert table["n"].to_dict() == nih.table.loc[in_anchor, "collection"].value_counts().to_dict()
    counted = table[table["in_mean"].fillna(False).astype(bool)]
    assert len(counted) >= 2 and (counted["auc_ours"] < counted["auc_anchor"]).all()
    report = json.loads((out / "metrics.json").read_text())
    means = report["comparison"]["grouped_triage"]["mean_within"]
    assert means["ours"] < means["anchor"]
    assert report["grouped"]["by"] == "collection"
    assert "Triage AUC within each collection" in (out / "report.html").read_text()
