"""End to end: predictions from a checkpoint, the evaluate / compare commands and the report."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from xraytriage.cli.main import main
from xraytriage.data import CSVDataset
from xraytriage.evaluate.pipeline import EvaluationConfig, evaluate_predictions
from xraytriage.evaluate.predictions import predict_dataset, read_predictions_csv

EVALUATION_PLOTS = (
    "clinical_summary",
    "roc_curves",
    "pr_curves",
    "calibration",
    "confusion_matrices",
    "triage_simulation",
)


@pytest.fixture(scope="module")
def training_run(synthetic_dir, tmp_path_factory):
    """A real (very short) run of the training pipeline on the synthetic data."""
    from xraytriage.train.config import TrainConfig
    from xraytriage.train.run import run_training

    output = tmp_path_factory.mktemp("runs") / "short"
    config = {
        "name": "short",
        "data": {
            "kind": "csv",
            "options": {
                "csv": str(synthetic_dir / "labels.csv"),
                "labels": ["Mass", "Effusion", "No Finding"],
            },
            "val_fraction": 0.3,
        },
        "preprocess": {"size": 32},
        "model": {"backbone": "vgg_like", "width": 0.25},
        "epochs": 2,
        "batch_size": 16,
        "max_steps_per_epoch": 1,
        "workers": 0,
        "progress": False,
    }
    run_training(TrainConfig.from_dict(config), output)
    return output


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _assert_self_contained(page: str) -> None:
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # every resource inline


@pytest.fixture(scope="module")
def evaluation(tiny_checkpoint_path, synthetic_holdout_dir, training_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    calibrated = out / "calibrated.pt"
    code = main(
        [
            "evaluate",
            "--model", str(tiny_checkpoint_path),
            "--dataset", "csv",
            "--csv", str(synthetic_holdout_dir / "labels.csv"),
            "--val-fraction", "0.4",
            "--calibrate", "temperature",
            "--save-checkpoint", str(calibrated),
            "--bootstrap", "100",
            "--run", str(training_run),
            "--output", str(out / "report"),
            "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.mark.slow
def test_evaluate_writes_metrics_and_a_self_contained_report_with_every_plot(evaluation, training_run):
    out = evaluation / "report"
    for name in ("metrics.json", "metrics.csv", "predictions.csv", "report.html"):
        assert (out / name).is_file(), name
    pngs = [*EVALUATION_PLOTS, f"auc_per_epoch_{training_run.name}"]
    for name in pngs:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.html").read_text()
    _assert_self_contained(page)
    embedded = _embedded_pngs(page)
    assert len(embedded) == len(pngs)
    assert {bytes(b) for b in embedded} == {(out / f"{n}.png").read_bytes() for n in pngs}


@pytest.mark.slow
def test_reported_numbers_match_sklearn_on_the_written_predictions(evaluation):
    out = evaluation / "report"
    metrics = json.loads((out / "metrics.json").read_text())
    preds = pd.read_csv(out / "predictions.csv")
    assert metrics["images"] == len(preds) < 60  # the validation share is not in the test part
    for label in ("Mass", "Nodule", "Effusion", "No Finding"):
        expected = roc_auc_score(preds[f"label_{label}"], preds[f"prob_{label}"])
        reported = metrics["metrics"]["labels"][label]["auc"]
        assert reported == pytest.approx(expected)
        ci = metrics["bootstrap"]["labels"][label]["auc"]
        assert ci["low"] <= reported <= ci["high"]
    assert metrics["metrics"]["macro"]["auc"] > 0.8  # the tiny model did learn the planted lesions
    assert metrics["operating_points"]["source"] == "validation"
    assert set(metrics["operating_points"]["rules"]) == {
        "youden",
        "sensitivity",
        "specificity",
        "f1",
        "checkpoint",
    }
    assert metrics["triage"]["priority_auc"] > 0.7  # a tiny model on planted lesions; chance is 0.5
    # every mean named by what it averages: the 3 findings apart from all 4 outputs
    findings = [
        roc_auc_score(preds[f"label_{n}"], preds[f"prob_{n}"]) for n in ("Mass", "Nodule", "Effusion")
    ]
    assert list(metrics["means"])[:2] == ["mean_auc_3_findings", "mean_auc_all_outputs"]
    assert metrics["means"]["mean_auc_3_findings"]["auc"] == pytest.approx(np.mean(findings))
    assert metrics["means"]["mean_auc_all_outputs"]["auc"] == pytest.approx(
        metrics["metrics"]["macro"]["auc"]
    )
    assert metrics["means"]["auc_no_finding"]["auc"] == pytest.approx(
        metrics["metrics"]["labels"]["No Finding"]["auc"]
    )
    table = pd.read_csv(out / "metrics.csv")
    assert {"(mean_auc_3_findings)", "(mean_auc_all_outputs)", "(macro over 4 labels)"} <= set(table["label"])
    assert "(micro, 4 labels pooled)" in set(table["label"])
    assert {"auc_low", "auc_high", "precision@0.4", "f1@0.8", "threshold_youden"} <= set(table.columns)


@pytest.mark.slow
def test_calibrated_checkpoint_is_saved_with_thresholds(evaluation, tiny_checkpoint):
    from xraytriage.models.checkpoint import load_checkpoint

    calibrated = load_checkpoint(evaluation / "calibrated.pt")
    assert set(calibrated.calibration) == set(tiny_checkpoint.label_names)
    assert all(c["method"] == "temperature" and c["t"] > 0 for c in calibrated.calibration.values())
    assert calibrated.thresholds != tiny_checkpoint.thresholds  # chosen on validation (Youden)
    assert calibrated.metrics["calibration"]["validation_images"] > 0


@pytest.mark.slow
def test_compare_runs_table_and_delong_on_shared_predictions(evaluation, training_run, tmp_path):
    # run A: the training run with the evaluation stored inside it; run B: a noisier copy
    a = tmp_path / "run_a"
    b = tmp_path / "run_b" / "eval"
    a.mkdir()
    (a / "metrics.csv").write_bytes((training_run / "metrics.csv").read_bytes())
    (a / "eval").mkdir()
    for name in ("metrics.json", "predictions.csv"):
        (a / "eval" / name).write_bytes((evaluation / "report" / name).read_bytes())
    noisy = pd.read_csv(evaluation / "report" / "predictions.csv")
    rng = np.random.default_rng(0)
    for col in [c for c in noisy.columns if c.startswith("prob_")]:
        noisy[col] = np.clip(noisy[col] + rng.normal(0, 0.4, len(noisy)), 0, 1)
    b.mkdir(parents=True)
    noisy.to_csv(b / "predictions_in.csv", index=False)
    assert main(["evaluate", "--predictions", str(b / "predictions_in.csv"), "--bootstrap", "50", "--output", str(b), "--quiet"]) == 0  # fmt: skip
    out = tmp_path / "compare"
    assert main(["compare", str(a), str(tmp_path / "run_b"), "--bootstrap", "50", "--output", str(out)]) == 0
    table = pd.read_csv(out / "comparison.csv", index_col="label")
    assert list(table.columns) == ["run_a", "run_b"]
    ours = json.loads((evaluation / "report" / "metrics.json").read_text())["metrics"]["labels"]
    assert table.at["Mass", "run_a"] == pytest.approx(ours["Mass"]["auc"])
    delong = pd.read_csv(out / "delong_run_a_vs_run_b.csv")
    assert set(delong["label"]) == {"Mass", "Nodule", "Effusion", "No Finding"}
    page = (out / "report.html").read_text()
    _assert_self_contained(page)
    assert len(_embedded_pngs(page)) == 2  # the heat map and run A's curves
    assert "class='header'" in page and "xraytriage compare" in page  # the command that made it
    assert "mean_auc_3_findings" in page and ">nan<" not in page.lower()


def test_compare_reads_hand_written_metrics_csvs(tmp_path):
    """The run contract: per-epoch rows, ``auc/<label>`` (train) or ``auc_<label>`` columns."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [0.7, 0.5, 0.4],
            "val_loss": [0.6, 0.5, 0.55],
            "mean_auc": [0.70, 0.85, 0.80],
            "auc/Mass": [0.72, 0.90, 0.85],
            "auc/Effusion": [0.68, 0.80, 0.75],
        }
    ).to_csv(one / "metrics.csv", index=False)
    pd.DataFrame({"epoch": [1, 2], "auc_Mass": [0.6, 0.65], "auc_Nodule": [0.55, 0.7]}).to_csv(
        two / "history.csv", index=False
    )
    assert main(["compare", str(one), str(two), "--output", str(tmp_path / "out")]) == 0
    table = pd.read_csv(tmp_path / "out" / "comparison.csv", index_col="label")
    assert table.at["Mass", "one"] == 0.90 and table.at["Effusion", "one"] == 0.80  # best epoch (2)
    assert table.at["Mass", "two"] == 0.65 and table.at["Nodule", "two"] == 0.7  # best mean (epoch 2)
    assert np.isnan(table.at["Nodule", "one"])
    # an old run's mean_auc is not trusted: means recomputed from its labels and named by them
    assert table.at["mean_auc_2_findings", "one"] == pytest.approx(0.85)
    assert "mean" not in table.index and "mean_auc" not in table.index
    page = (tmp_path / "out" / "report.html").read_text()
    assert len(_embedded_pngs(page)) == 3  # heat map + one AUC curve per run


def test_evaluate_saved_out_of_fold_predictions(tmp_path):
    """``cv`` writes ``path, patient_id, fold, <label>, prob_<label>``: evaluate without a model."""
    rng = np.random.default_rng(1)
    n = 120
    y = rng.integers(0, 2, (n, 2)).astype(float)
    frame = pd.DataFrame(
        {"path": [f"/x/img{i}.png" for i in range(n)], "patient_id": [f"p{i // 3}" for i in range(n)]}
    )
    frame["fold"] = np.arange(n) % 5
    for j, name in enumerate(("Mass", "Pleural Thickening")):
        frame[name] = y[:, j]
        frame[f"prob_{name}"] = np.clip(0.3 * y[:, j] + 0.7 * rng.random(n), 0, 1)
    frame.to_csv(tmp_path / "oof.csv", index=False)
    out = tmp_path / "out"
    assert main(["evaluate", "--predictions", str(tmp_path / "oof.csv"), "--bootstrap", "50", "--output", str(out), "--quiet"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["patients"] == 40
    assert metrics["metrics"]["labels"]["Pleural Thickening"]["auc"] == pytest.approx(
        roc_auc_score(y[:, 1], frame["prob_Pleural Thickening"])
    )
    assert metrics["operating_points"]["source"].startswith("evaluation set")  # no validation given
    # no abnormal columns saved: P(abnormal) = noisy-OR of the findings, truth from the labels
    triage = metrics["triage"]
    assert triage["studies"] == n  # no study ids: every image is a study
    noisy_or = 1 - (1 - frame["prob_Mass"]) * (1 - frame["prob_Pleural Thickening"])
    assert triage["priority_auc"] == pytest.approx(roc_auc_score(y.max(axis=1), noisy_or))
    assert (out / "report.html").is_file() and (out / "triage_simulation.png").is_file()


def test_predictions_skip_bad_files_and_use_the_cache(tiny_checkpoint, synthetic_holdout_dir, tmp_path):
    from xraytriage.data.cache import ImageCache

    table = pd.read_csv(synthetic_holdout_dir / "labels.csv").iloc[:10]
    table["path"] = [str(synthetic_holdout_dir / p) for p in table["path"]]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    bad = table.iloc[:2].copy()
    bad["path"] = [str(tmp_path / "broken.png"), str(tmp_path / "missing.png")]
    pd.concat([table.iloc[:4], bad, table.iloc[4:]]).to_csv(tmp_path / "mixed.csv", index=False)
    labels = tiny_checkpoint.label_names
    dataset = CSVDataset(tmp_path / "mixed.csv", labels=labels)
    preds = predict_dataset(tiny_checkpoint, dataset, batch_size=4, progress=False)
    assert len(preds.frame) == 10
    assert [e["path"] for e in preds.errors] == [str(tmp_path / "broken.png"), str(tmp_path / "missing.png")]
    assert all(e["error"] for e in preds.errors)
    assert "broken.png" not in set(preds.frame["image"])

    cache = ImageCache(tmp_path / "cache", tiny_checkpoint.preprocess)
    cache.build(table["path"], workers=1, progress=False)
    cached = predict_dataset(tiny_checkpoint, dataset, batch_size=4, cache=cache, progress=False)
    np.testing.assert_allclose(cached.probabilities(), preds.probabilities(), atol=1e-6)


def test_cross_dataset_predictions_score_only_labels_the_dataset_has(
    tiny_checkpoint, synthetic_holdout_dir, tmp_path
):
    table = pd.read_csv(synthetic_holdout_dir / "labels.csv")
    # another "dataset": it annotates Mass and Effusion (spelt its own way) and Pneumothorax
    other = table[["path", "patient_id", "study_id", "Mass", "Effusion"]].rename(
        columns={"Effusion": "Pleural Effusion"}
    )
    other["Pneumothorax"] = 0
    other.to_csv(synthetic_holdout_dir / "other.csv", index=False)
    dataset = CSVDataset(synthetic_holdout_dir / "other.csv")
    preds = predict_dataset(tiny_checkpoint, dataset, progress=False)
    truth_columns = {c for c in preds.frame.columns if c.startswith("label_")}
    assert truth_columns == {
        "label_Mass",
        "label_Effusion",
        "label_Pneumothorax",
    }  # dataset's own spelling harmonised
    result = evaluate_predictions(preds.frame, config=EvaluationConfig(n_boot=20, simulate=False))
    assert result["labels"] == ["Mass", "Effusion"]
    assert "Pneumothorax" not in result["metrics"]["labels"]  # the model does not predict it
    assert result["label_overlap"] == {
        "shared": ["Mass", "Effusion"],
        "model_only": ["Nodule", "No Finding"],
        "dataset_only": ["Pneumothorax"],
    }
    assert result["metrics"]["labels"]["Effusion"]["auc"] == pytest.approx(
        roc_auc_score(table["Effusion"], preds.frame["prob_Effusion"])
    )


def test_read_predictions_rejects_files_without_probabilities(tmp_path):
    from xraytriage.errors import ConfigError

    pd.DataFrame({"image": ["a.png"], "Mass": [1]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(ConfigError, match=r"p\.csv: no prob_"):
        read_predictions_csv(tmp_path / "p.csv")


def test_cv_epochs_csv_is_read_as_fold_means(tmp_path):
    from xraytriage.evaluate.run_folders import read_history, run_label_aucs

    pd.DataFrame(
        {
            "epoch": [1, 2],
            "n_folds": [5, 5],
            "mean_auc_mean": [0.7, 0.8],
            "mean_auc_std": [0.05, 0.04],
            "auc/Mass_mean": [0.75, 0.82],
            "auc/Mass_std": [0.1, 0.1],
            "val_loss_mean": [0.6, 0.5],
            "val_loss_std": [0.01, 0.01],
        }
    ).to_csv(tmp_path / "cv_epochs.csv", index=False)
    history = read_history(tmp_path)
    assert {"mean_auc", "auc/Mass", "val_loss"} <= set(history.columns)
    assert not any(c.endswith("_std") for c in history.columns)
    aucs, source = run_label_aucs(tmp_path)
    assert aucs == {"Mass": 0.82} and "best epoch 2" in source


def test_validation_split_column_chooses_operating_points(tmp_path):
    rng = np.random.default_rng(2)
    n = 200
    y = rng.integers(0, 2, n).astype(float)
    frame = pd.DataFrame(
        {"image": [f"i{k}.png" for k in range(n)], "patient_id": [f"p{k}" for k in range(n)]}
    )
    frame["label_Mass"] = y
    frame["prob_Mass"] = np.clip(0.4 * y + 0.6 * rng.random(n), 0, 1)
    frame["split"] = np.where(np.arange(n) < 80, "val", "test")
    frame.to_csv(tmp_path / "p.csv", index=False)
    args = ["evaluate", "--predictions", str(tmp_path / "p.csv"), "--val-split", "val", "--bootstrap", "20"]
    assert (
        main(
            [
                *args,
                "--operating-point",
                "sensitivity:0.95",
                "--no-simulation",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["images"] == 120 and metrics["operating_points"]["source"] == "validation"
    from xraytriage.evaluate.operating_points import sensitivity_threshold

    val = frame[frame["split"] == "val"]
    expected = sensitivity_threshold(val["label_Mass"], val["prob_Mass"], target=0.95)
    assert metrics["operating_points"]["rules"]["sensitivity"]["Mass"]["threshold"] == pytest.approx(expected)


@pytest.mark.slow
def test_compare_tests_runs_on_their_validation_predictions(training_run, tmp_path):
    """Two runs validated on the same images (same split seed): DeLong on ``val_predictions.csv``."""
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        run.mkdir()
        (run / "metrics.csv").write_bytes((training_run / "metrics.csv").read_bytes())
    (a / "val_predictions.csv").write_bytes((training_run / "val_predictions.csv").read_bytes())
    noisy = pd.read_csv(training_run / "val_predictions.csv")
    noisy["prob_Mass"] = np.random.default_rng(0).random(len(noisy))
    noisy.to_csv(b / "val_predictions.csv", index=False)
    assert main(["compare", str(a), str(b), "--bootstrap", "30", "--output", str(tmp_path / "out")]) == 0
    delong = pd.read_csv(tmp_path / "out" / "delong_a_vs_b.csv").set_index("label")
    assert set(delong.index) == {"Mass", "Effusion", "No Finding"}
    assert delong.at["Effusion", "difference"] == 0 and delong.at["Effusion", "delong_p"] == 1
    assert delong.at["Mass", "n"] == len(noisy)


def test_report_includes_localisation_tables_of_localize_eval(tmp_path):
    rng = np.random.default_rng(2)
    n = 60
    frame = pd.DataFrame(
        {"path": [f"/x/img{i}.png" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)]}
    )
    frame["Mass"] = rng.integers(0, 2, n).astype(float)
    frame["prob_Mass"] = rng.random(n)
    frame.to_csv(tmp_path / "preds.csv", index=False)
    loc = tmp_path / "loc"
    loc.mkdir()
    pd.DataFrame(
        {"finding": ["Mass"], "metric": ["T(IoBB)=0.5"], "model": [0.4123], "random": [0.0871]}
    ).to_csv(loc / "localization.csv", index=False)
    out = tmp_path / "out"
    args = ["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--bootstrap", "20", "--no-simulation",
            "--localization", str(loc), "--localization", str(tmp_path / "absent"), "--output", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    page = (out / "report.html").read_text()
    assert "Localisation" in page and "0.412" in page and "0.087" in page
    assert "absent/localization.csv: not found" in page
