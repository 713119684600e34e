"""Study-level (MURA) evaluation on the real MURA CSV layout, and cross-dataset label mapping."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from xraytriage.evaluate.cross_dataset import cross_dataset_metrics, label_overlap
from xraytriage.evaluate.pipeline import EvaluationConfig, evaluate_predictions
from xraytriage.evaluate.study import aggregate_studies, evaluate_studies, study_metrics
from xraytriage.labels import CHEXPERT_NIH_OVERLAP, NIH_FINDINGS, NO_FINDING, canonical_label


@pytest.fixture(scope="module")
def mura_predictions(shared_data, tmp_path_factory) -> pd.DataFrame:
    """The real MURA validation layout (3197 images in 1201 studies) with generated image
    probabilities: informative on average, one noisy view per study now and then."""
    from xraytriage.data.mura import MURADataset

    meta = shared_data / "mura" / "meta"
    dataset = MURADataset(
        meta / "valid_image_paths.csv",
        meta / "valid_labeled_studies.csv",
        root=tmp_path_factory.mktemp("mura"),
    )
    rng = np.random.default_rng(0)
    label = dataset.labels[:, 0].astype(float)
    logit = 1.2 * (2 * label - 1) + rng.normal(0, 1.5, len(label))
    return pd.DataFrame(
        {
            "image": dataset.table["relative_path"],
            "patient_id": dataset.table["patient_id"],
            "study_id": dataset.table["study_id"],
            "label_Abnormal": label,
            "prob_Abnormal": 1 / (1 + np.exp(-logit)),
        }
    )


def test_mura_studies_aggregate_to_the_labeled_study_list(mura_predictions, shared_data):
    studies_csv = pd.read_csv(shared_data / "mura" / "meta" / "valid_labeled_studies.csv", header=None)
    studies = aggregate_studies(mura_predictions, ["prob_Abnormal"], ["label_Abnormal"], "mean")
    assert len(studies) == len(studies_csv) == 1201
    assert studies["images"].sum() == len(mura_predictions) == 3197
    # study labels are those of the labeled-studies file (the folder name says positive/negative too)
    positive = studies["study_id"].str.endswith("positive")
    assert (studies.loc[positive, "label_Abnormal"] == 1).all() and (
        studies.loc[~positive, "label_Abnormal"] == 0
    ).all()
    assert int(studies["label_Abnormal"].sum()) == int((studies_csv[1] == 1).sum())


def test_aggregations_by_hand_on_one_study(mura_predictions):
    study = mura_predictions["study_id"].iloc[0]
    p = mura_predictions.loc[mura_predictions["study_id"] == study, "prob_Abnormal"].to_numpy()
    assert len(p) > 1
    results = {
        m: aggregate_studies(mura_predictions, ["prob_Abnormal"], None, m)
        .set_index("study_id")
        .at[study, "prob_Abnormal"]
        for m in ("mean", "max", "noisy_or")
    }
    assert results["mean"] == pytest.approx(p.mean())
    assert results["max"] == pytest.approx(p.max())
    assert results["noisy_or"] == pytest.approx(1 - np.prod(1 - p))
    assert results["noisy_or"] >= results["max"] >= results["mean"]


def test_mean_aggregation_matches_the_mura_dataset_helper(mura_predictions, shared_data, tmp_path):
    from xraytriage.data.mura import MURADataset

    meta = shared_data / "mura" / "meta"
    dataset = MURADataset(meta / "valid_image_paths.csv", meta / "valid_labeled_studies.csv", root=tmp_path)
    theirs = dataset.study_scores(mura_predictions["prob_Abnormal"].to_numpy(), "mean").set_index("study_id")
    ours = aggregate_studies(mura_predictions, ["prob_Abnormal"], None, "mean").set_index("study_id")
    np.testing.assert_allclose(ours.loc[theirs.index, "prob_Abnormal"], theirs["score"])


def test_study_metrics_kappa_sensitivity_specificity(mura_predictions):
    result = evaluate_studies(mura_predictions, "prob_Abnormal", "label_Abnormal", threshold=0.5)
    studies = aggregate_studies(mura_predictions, ["prob_Abnormal"], ["label_Abnormal"], "mean")
    y = studies["label_Abnormal"].to_numpy()
    pred = (studies["prob_Abnormal"].to_numpy() >= 0.5).astype(int)
    mean = result["mean"]
    assert mean["studies"] == 1201
    assert mean["kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    assert mean["sensitivity"] == pytest.approx(pred[y == 1].mean())
    assert mean["specificity"] == pytest.approx(1 - pred[y == 0].mean())
    assert mean["auc"] == pytest.approx(roc_auc_score(y, studies["prob_Abnormal"]))
    # pooling views helps: the study AUC beats the image AUC on these generated scores
    image_auc = roc_auc_score(mura_predictions["label_Abnormal"], mura_predictions["prob_Abnormal"])
    assert mean["auc"] > image_auc
    assert set(result) == {"mean", "max", "noisy_or"}


def test_kappa_by_hand():
    # 2x2: agree on 3 of 4; po = .75, pe = .5 -> kappa .5
    out = study_metrics(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.1]), threshold=0.5)
    assert out["kappa"] == pytest.approx(0.5)
    assert out["sensitivity"] == 1.0 and out["specificity"] == 0.5


def test_evaluation_reports_study_level_for_multi_image_studies(mura_predictions):
    cfg = EvaluationConfig(n_boot=20, simulate=False)
    result = evaluate_predictions(mura_predictions, config=cfg)
    assert result["studies"] == 1201
    assert result["study_level"]["Abnormal"]["max"]["studies"] == 1201


# --- cross-dataset ----------------------------------------------------------------------------
def _chexpert_header(shared_data) -> list[str]:
    with gzip.open(shared_data / "chexpert" / "meta" / "chexpert_train.csv.gz", "rt") as fh:
        header = fh.readline().strip().split(",")
    return header[header.index("No Finding") :]


def test_chexpert_to_nih_overlap_uses_the_real_column_names(shared_data):
    chexpert = _chexpert_header(shared_data)
    assert "Pleural Effusion" in chexpert  # the raw CheXpert spelling
    overlap = label_overlap(chexpert, [*NIH_FINDINGS, NO_FINDING])
    assert set(overlap["shared"]) == set(CHEXPERT_NIH_OVERLAP)
    assert "Effusion" in overlap["shared"]
    assert {"Lung Opacity", "Fracture", "Support Devices"} <= set(overlap["model_only"])
    assert {"Mass", "Nodule", "Hernia", "Emphysema"} <= set(overlap["dataset_only"])


def test_cross_dataset_metrics_score_only_shared_labels(shared_data):
    """A CheXpert-label model on the real NIH labels of the images here."""
    from xraytriage.data.registry import load_dataset

    nih = load_dataset("nih", root=str(shared_data / "nih"))
    chexpert = _chexpert_header(shared_data)
    rng = np.random.default_rng(0)
    truth = pd.DataFrame(nih.labels, columns=nih.label_names)
    signal = [
        truth[canonical_label(c)] if canonical_label(c) in truth else np.zeros(len(truth)) for c in chexpert
    ]
    probs = np.column_stack(signal) + rng.normal(0, 0.7, (len(truth), len(chexpert)))
    result = cross_dataset_metrics(nih.labels, probs, dataset_labels=nih.label_names, model_labels=chexpert)
    assert set(result["labels"]) == set(CHEXPERT_NIH_OVERLAP)
    j = chexpert.index("Pleural Effusion")
    expected = roc_auc_score(truth["Effusion"], probs[:, j])
    assert result["labels"]["Effusion"]["auc"] == pytest.approx(expected)
    assert result["labels"]["Effusion"]["n"] == len(nih)
    assert result["macro"]["auc"] > 0.7


def test_mura_abnormal_label_is_the_triage_ground_truth(shared_data, tmp_path):
    from xraytriage.data.mura import MURADataset
    from xraytriage.evaluate.predictions import abnormal_truth, attach_labels

    meta = shared_data / "mura" / "meta"
    dataset = MURADataset(meta / "valid_image_paths.csv", meta / "valid_labeled_studies.csv", root=tmp_path)
    truth = abnormal_truth(dataset.labels, dataset.label_names)
    np.testing.assert_array_equal(truth, dataset.labels[:, 0])
    # MURA file names repeat (image1.png in every study): predictions listed by their relative
    # path join to the dataset's absolute paths through as many parent folders as needed
    rows = np.arange(0, 600, 7)
    preds = pd.DataFrame(
        {"path": dataset.table["relative_path"].iloc[rows], "prob_Abnormal": np.linspace(0, 1, len(rows))}
    )
    joined = attach_labels(preds, dataset)
    assert len(joined) == len(rows)
    assert joined["study_id"].tolist() == dataset.table["study_id"].iloc[rows].tolist()
    np.testing.assert_array_equal(joined["label_Abnormal"], dataset.labels[rows, 0])
    assert (joined["abnormal"] == joined["label_Abnormal"]).all()
