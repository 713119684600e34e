"""Per-label metrics, operating points and calibration on hand-checkable inputs, against sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from xraytriage.evaluate.calibration import (
    calibrate_checkpoint,
    expected_calibration_error,
    fit_platt,
    fit_temperature,
    reliability_table,
)
from xraytriage.evaluate.metrics import (
    label_summary,
    multilabel_metrics,
    rank_auc,
    step_average_precision,
    threshold_metrics,
)
from xraytriage.evaluate.operating_points import (
    choose_threshold,
    f1_threshold,
    parse_method,
    sensitivity_threshold,
    youden_threshold,
)

# 4 positives, 4 negatives; one negative (0.7) outranks one positive (0.6)
y8 = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=float)
p8 = np.array([0.9, 0.8, 0.6, 0.45, 0.7, 0.3, 0.2, 0.1])


def test_auc_and_ap_by_hand():
    # 16 pos/neg pairs, the pairs (0.6 vs 0.7) and (0.45 vs 0.7) are discordant: AUC 14/16
    summary = label_summary(y8, p8)
    assert summary["auc"] == pytest.approx(14 / 16)
    # ranks: 0.9 p8, 0.8 p8, 0.7 N, 0.6 p8, 0.45 p8 -> AP = (1 + 1 + 3/4 + 4/5) / 4
    assert summary["average_precision"] == pytest.approx((1 + 1 + 0.75 + 0.8) / 4)
    assert summary["prevalence"] == 0.5
    assert summary["positives"] == 4 and summary["n"] == 8


def test_threshold_metrics_by_hand_and_sklearn():
    m = threshold_metrics(
        y8, p8, threshold=0.5
    )  # predicted positive: 0.9 0.8 0.6 0.7 -> tp 3, fp 1, fn 1, tn 3
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 3)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    pred = (p8 >= 0.5).astype(int)
    assert m["f1"] == pytest.approx(f1_score(y8, pred))
    assert m["precision"] == pytest.approx(precision_score(y8, pred))
    # no predicted positive: precision is 0 (sklearn zero_division=0), not an error
    assert threshold_metrics(y8, p8, threshold=0.95)["precision"] == 0.0


def test_nan_labels_are_masked_per_label():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 3)).astype(float)
    p = np.clip(y * 0.3 + rng.random((200, 3)) * 0.7, 0, 1)
    y[:50, 1] = np.nan  # label 1 unknown for 50 images; the others keep them
    result = multilabel_metrics(y, p, label_names=["a", "b", "c"])
    assert result["labels"]["a"]["n"] == 200
    assert result["labels"]["b"]["n"] == 150
    assert result["labels"]["b"]["auc"] == pytest.approx(roc_auc_score(y[50:, 1], p[50:, 1]))
    expected_macro = np.mean(
        [roc_auc_score(y[~np.isnan(y[:, j]), j], p[~np.isnan(y[:, j]), j]) for j in range(3)]
    )
    assert result["macro"]["auc"] == pytest.approx(expected_macro)
    for t in ("0.4", "0.5", "0.6", "0.7", "0.8"):
        assert t in result["labels"]["c"]["at_threshold"]


def test_micro_and_macro_match_sklearn_on_complete_matrix():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(300, 4)).astype(float)
    p = np.clip(0.4 * y + 0.6 * rng.random((300, 4)), 0, 1)
    result = multilabel_metrics(y, p, label_names=list("abcd"))
    assert result["micro"]["auc"] == pytest.approx(roc_auc_score(y, p, average="micro"))
    assert result["macro"]["auc"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert result["micro"]["average_precision"] == pytest.approx(
        average_precision_score(y, p, average="micro")
    )
    pred = (p >= 0.5).astype(int)
    assert result["micro"]["f1@0.5"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert result["micro"]["recall@0.5"] == pytest.approx(recall_score(y, pred, average="micro"))
    assert result["macro"]["f1@0.5"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_single_class_label_gives_nan_auc_not_error():
    result = label_summary(np.zeros(10), np.linspace(0, 1, 10))
    assert np.isnan(result["auc"]) and np.isnan(result["average_precision"])


def test_fast_bootstrap_metrics_equal_sklearn_with_ties():
    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(5, 80))
        y = rng.integers(0, 2, n).astype(float)
        if y.min() == y.max():
            continue
        p = np.round(rng.random(n), 1)  # many ties
        assert rank_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert step_average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)


# --- operating points -----------------------------------------------------------------------
def test_youden_threshold_by_hand():
    # at t=0.8: tpr 0.5, fpr 0 (J .5); t=0.6: tpr .75 fpr .25 (J .5); t=0.45: tpr 1, fpr .25 (J .75)
    assert youden_threshold(y8, p8) == pytest.approx(0.45)


def test_sensitivity_threshold_reaches_target():
    t = sensitivity_threshold(y8, p8, target=0.75)
    assert t == pytest.approx(0.6)
    assert threshold_metrics(y8, p8, threshold=t)["sensitivity"] >= 0.75
    assert sensitivity_threshold(y8, p8, target=1.0) == pytest.approx(0.45)


def test_f1_threshold_maximises_f1():
    t = f1_threshold(y8, p8)
    best = max(f1_score(y8, (p8 >= c).astype(int)) for c in np.unique(p8))
    assert f1_score(y8, (p8 >= t).astype(int)) == pytest.approx(best)
    assert t == pytest.approx(0.45)  # tp 4, fp 1: F1 8/9


def test_operating_point_parsing_and_single_class_default():
    assert parse_method("sensitivity:0.95") == ("sensitivity", 0.95)
    assert parse_method("youden") == ("youden", 0.9)
    with pytest.raises(ValueError):
        parse_method("magic")
    assert choose_threshold(np.ones(5), np.linspace(0, 1, 5)) == 0.5


# --- calibration ----------------------------------------------------------------------------
def test_ece_by_hand():
    # bin [0.2,0.3): 2 cases p=.2/.2 one positive -> |.5-.2| ; bin [0.8,0.9): p=.8,.8 both positive -> .2
    y = np.array([1, 0, 1, 1])
    p = np.array([0.2, 0.2, 0.8, 0.8])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == pytest.approx(0.0)


def test_reliability_table_matches_sklearn_calibration_curve():
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(float)
    table = reliability_table(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(table["fraction_positive"], frac)
    np.testing.assert_allclose(table["mean_predicted"], mean)
    assert table["count"].sum() == 500


def _overconfident_logits(seed: int = 4, n: int = 2000, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(float)
    return true_logit * scale, y  # a model 3x too confident


def test_temperature_scaling_recovers_overconfidence():
    z, y = _overconfident_logits()
    t = fit_temperature(y, z)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(y, 1 / (1 + np.exp(-z)))
    after = expected_calibration_error(y, 1 / (1 + np.exp(-z / t)))
    assert after < before / 2


def test_platt_scaling_matches_unregularised_logistic_regression():
    z, y = _overconfident_logits(seed=5)
    a, b = fit_platt(y, z)
    assert a == pytest.approx(1 / 3, rel=0.15)
    assert abs(b) < 0.2


def _untrained_checkpoint(names):
    from xraytriage.models import Checkpoint, ModelConfig, build_model
    from xraytriage.preprocess import PreprocessContract

    cfg = ModelConfig(backbone="vgg_like", num_classes=len(names), in_channels=1, width=0.25)
    return Checkpoint(
        model=cfg,
        label_names=names,
        preprocess=PreprocessContract(size=32),
        state_dict=build_model(cfg).state_dict(),
    )


def test_calibrate_checkpoint_writes_calibration_and_thresholds(tmp_path):
    from xraytriage.models.checkpoint import load_checkpoint

    names = ["Mass", "Nodule", "No Finding"]
    tiny_checkpoint = _untrained_checkpoint(names)
    z, y = _overconfident_logits(seed=6, n=400)
    logits = np.column_stack([z + 0.1 * j for j in range(len(names))])
    labels = np.column_stack([y] * len(names))
    calibrated = calibrate_checkpoint(
        tiny_checkpoint, y_true=labels, y_score=logits, method="platt", threshold_method="f1"
    )
    assert tiny_checkpoint.calibration == {}  # original untouched
    assert set(calibrated.calibration) == set(names)
    assert all(c["method"] == "platt" for c in calibrated.calibration.values())
    probs = calibrated.probabilities(logits)
    for j, n in enumerate(names):
        assert calibrated.thresholds[n] == pytest.approx(f1_threshold(labels[:, j], probs[:, j]))
    loaded = load_checkpoint(calibrated.save(tmp_path / "cal.pt"))
    assert loaded.calibration == calibrated.calibration
    assert loaded.thresholds == pytest.approx(calibrated.thresholds)
    assert (
        loaded.metrics["calibration"]["ece_after"][names[0]]
        < loaded.metrics["calibration"]["ece_before"][names[0]]
    )


def test_threshold_metrics_equal_sklearn_on_random_cases():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(9)
    for _ in range(40):
        n = int(rng.integers(1, 60))
        y = rng.integers(0, 2, n).astype(float)
        p = np.round(rng.random(n), 1)
        t = float(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0]))
        pred = (p >= t).astype(int)
        m = threshold_metrics(y, p, threshold=t)
        tn, fp, fn, tp = confusion_matrix(y.astype(int), pred, labels=[0, 1]).ravel()
        assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
        prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=[1], average=None, zero_division=0)
        assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((prec[0], rec[0], f1[0]))
        spec = recall_score(1 - y, 1 - pred, zero_division=0)
        assert m["specificity"] == pytest.approx(spec)
