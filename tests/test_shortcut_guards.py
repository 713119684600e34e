"""The guards against learning the collection instead of disease: grouped metrics and the
shortcut audit, group-balanced sampling, equalising preprocessing, and operating points a
radiologist can live with (specificity targets, a cap on flagged normals, prevalence shift)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from xraytriage.evaluate.calibration import calibrate_checkpoint, logit, prior_shift
from xraytriage.evaluate.grouped import age_band, group_labels, group_only_auc, grouped_auc
from xraytriage.evaluate.operating_points import (
    cap_normal_flag_rate,
    choose_thresholds,
    normal_flag_rate,
    parse_label_targets,
    parse_method,
    specificity_threshold,
)
from xraytriage.evaluate.pipeline import EvaluationConfig, evaluate_predictions, write_evaluation
from xraytriage.models import Checkpoint, ModelConfig, build_model
from xraytriage.preprocess import PreprocessContract, clahe_uint8, equalize_uint8
from xraytriage.train.config import SamplerConfig
from xraytriage.train.samplers import EpochSampler, stratum_weights


def _collection_shortcut(seed: int = 0):
    """Collection A: only abnormal images, all scored high (the model recognises A). Collection
    B: both classes, scores that know nothing about disease. Pooled AUC looks good; the truth
    is chance."""
    rng = np.random.default_rng(seed)
    n_a, n_b = 300, 300
    y = np.concatenate([np.ones(n_a), rng.integers(0, 2, n_b)]).astype(float)
    p = np.concatenate([rng.uniform(0.7, 1.0, n_a), rng.uniform(0.0, 0.7, n_b)])
    groups = np.array(["A"] * n_a + ["B"] * n_b, dtype=object)
    return y, p, groups


def test_a_collection_only_signal_is_caught():
    y, p, groups = _collection_shortcut()
    r = grouped_auc(y, p, groups=groups)
    assert r["pooled_auc"] > 0.75
    assert r["groups"]["A"]["auc"] is None  # one class: no AUC there
    assert abs(r["groups"]["B"]["auc"] - 0.5) < 0.08
    assert r["within_mean_auc"] == pytest.approx(r["groups"]["B"]["auc"])
    assert r["group_only_auc"] > 0.7  # the collection alone predicts the label
    assert r["shortcut_warning"] and r["pooled_minus_within"] > 0.2


def test_a_real_signal_is_not_flagged():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600).astype(float)
    p = np.clip(0.5 * y + rng.normal(0.25, 0.2, 600), 0, 1)
    groups = np.array(["A", "B", "C"] * 200, dtype=object)
    r = grouped_auc(y, p, groups=groups)
    assert r["within_mean_auc"] > 0.8
    assert abs(r["group_only_auc"] - 0.5) < 0.1
    assert not r["shortcut_warning"]


def test_group_only_auc_is_chance_for_equal_prevalence():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1], dtype=float)
    assert group_only_auc(y, groups=np.array(list("AABBCCDD"))) == pytest.approx(0.5)
    assert group_only_auc(y, groups=np.array(list("AAAABBBB"))) == pytest.approx(0.5)
    assert group_only_auc(np.array([1, 1, 0, 0.0]), groups=np.array(list("AABB"))) == pytest.approx(1.0)


def test_group_labels_from_prediction_columns():
    frame = pd.DataFrame({"collection": ["a", None, "b"], "age": [5, 45, np.nan], "sex": ["M", "F", ""]})
    assert list(group_labels(frame, "collection")) == ["a", "unknown", "b"]
    assert list(group_labels(frame, "age-band")) == ["0-17", "40-59", "unknown"]
    assert list(group_labels(frame, "sex")) == ["M", "F", "unknown"]
    assert age_band(300) == "unknown"
    from xraytriage.errors import ConfigError

    with pytest.raises(ConfigError, match="view"):
        group_labels(frame, "view")


def test_evaluate_reports_within_collection_auc_and_warns(tmp_path):
    y, p, groups = _collection_shortcut(2)
    frame = pd.DataFrame(
        {
            "image": [f"{i}.png" for i in range(len(y))],
            "patient_id": [str(i) for i in range(len(y))],
            "collection": groups,
            "prob_Effusion": p,
            "label_Effusion": y,
        }
    )
    cfg = EvaluationConfig(n_boot=20, group_by="collection", simulate=False)
    result = evaluate_predictions(frame, config=cfg)
    grouped = result["grouped"]
    assert grouped["by"] == "collection"
    assert grouped["labels"]["Effusion"]["shortcut_warning"]
    assert any("Effusion" in w and "confounded" in w for w in grouped["warnings"])
    paths = write_evaluation(result, tmp_path, frame)
    table = pd.read_csv(paths["grouped_metrics.csv"])
    assert set(table["group"]) >= {"A", "B", "(within-group mean)", "(pooled)"}
    html = paths["report.html"].read_text()
    assert "Within each collection" in html and "Warning" in html
    assert json.loads(paths["metrics.json"].read_text())["grouped"]["labels"]["Effusion"]["shortcut_warning"]


def test_group_balanced_sampling_draws_every_cell_equally():
    strata = np.array(["box|abnormal"] * 500 + ["c|abnormal"] * 300 + ["c|normal"] * 100)
    weights = stratum_weights(strata)
    per_cell = pd.Series(weights).groupby(strata).sum()
    np.testing.assert_allclose(per_cell.to_numpy(), per_cell.iloc[0])
    labels = np.zeros((len(strata), 2), dtype=np.float32)
    sampler = EpochSampler(labels, SamplerConfig(name="group_balanced"), seed=3, strata=strata)
    drawn = pd.Series(strata[np.array(list(sampler))]).value_counts(normalize=True)
    assert drawn.min() > 0.27 and drawn.max() < 0.39  # each cell about a third, not 56/33/11 %
    assert list(sampler) == list(
        EpochSampler(labels, SamplerConfig(name="group_balanced"), seed=3, strata=strata)
    )


def test_equalisation_removes_global_brightness_and_contrast():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    base = (0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 0.03, (96, 96))).clip(0, 1)
    dark = (0.2 * base + 0.05) ** 1.6  # another detector/collection: darker, less contrast, gamma
    # what the contract does first: a min-max stretch, then resize to uint8
    a, b = (PreprocessContract(size=96, intensity="minmax").to_uint8(x) for x in (base, dark))
    gap = abs(float(a.mean()) - float(b.mean()))
    assert gap > 10  # the stretch alone leaves the tone curve apart
    ea, eb = equalize_uint8(a).astype(float), equalize_uint8(b).astype(float)
    assert abs(ea.mean() - eb.mean()) < 3 and np.corrcoef(ea.ravel(), eb.ravel())[0, 1] > 0.97
    ca, cb = (PreprocessContract(size=96, intensity="clahe").to_uint8(x).astype(float) for x in (base, dark))
    assert abs(ca.mean() - cb.mean()) < 0.7 * gap and np.corrcoef(ca.ravel(), cb.ravel())[0, 1] > 0.95
    flat = np.full((40, 40), 7, dtype=np.uint8)
    assert equalize_uint8(flat).tolist() == flat.tolist()
    assert clahe_uint8(flat).dtype == np.uint8


def test_contract_with_clahe_and_border_round_trips_through_checkpoint_and_onnx(tmp_path):
    from xraytriage.models.inference import OnnxPredictor
    from xraytriage.models.onnx_export import export_onnx, read_onnx_metadata

    contract = PreprocessContract(size=32, intensity="clahe", border=0.05, clahe_clip=3.0, clahe_tiles=4)
    assert contract.cache_key() != PreprocessContract(size=32).cache_key()
    assert contract.cache_key() != PreprocessContract(size=32, intensity="clahe", border=0.05).cache_key()
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="vgg_like", num_classes=2, in_channels=1, width=0.25)
    net = build_model(cfg).eval()
    ckpt = Checkpoint(cfg, ["Effusion", "No Finding"], contract, dict(net.state_dict()))
    path = ckpt.save(tmp_path / "m.pt")
    from xraytriage.models import load_checkpoint

    assert load_checkpoint(path).preprocess == contract
    onnx = export_onnx(ckpt, tmp_path / "m.onnx")
    assert PreprocessContract.from_dict(json.loads(read_onnx_metadata(onnx)["preprocess"])) == contract
    assert OnnxPredictor(onnx).checkpoint.preprocess == contract
    # the crop really happens: a bright frame around the image does not reach the network
    pixels = np.zeros((100, 100), np.float32)
    pixels[:4], pixels[-4:], pixels[:, :4], pixels[:, -4:] = 1, 1, 1, 1
    pixels[30:70, 30:70] = 0.5
    cropped = PreprocessContract(size=32, intensity="minmax", border=0.05).to_uint8(pixels)
    uncropped = PreprocessContract(size=32, intensity="minmax").to_uint8(pixels)
    assert uncropped[0].max() == 255 and cropped[0].max() == 0 and cropped[:, 0].max() == 0


def test_specificity_rule_keeps_false_alarms_at_the_target():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000).astype(float)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 2000), 0, 1)
    for target in (0.8, 0.9, 0.97):
        t = specificity_threshold(y, p, target=target)
        spec = float((p[y == 0] < t).mean())
        assert target <= spec < target + 0.01
    assert parse_method("specificity") == ("specificity", 0.9)
    assert parse_method("specificity:0.95") == ("specificity", 0.95)
    assert parse_label_targets(["Pleural_Thickening=0.8"]) == {"Pleural Thickening": 0.8}
    from xraytriage.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_label_targets(["Mass:0.8"])
    labels = np.column_stack([y, y])
    probs = np.column_stack([p, p])
    chosen = choose_thresholds(
        labels, probs, label_names=["A", "B"], method="specificity", target=0.9, label_targets={"B": 0.99}
    )
    assert chosen["B"] > chosen["A"]


def test_cap_on_flagged_normals_raises_all_thresholds_together():
    rng = np.random.default_rng(0)
    n, k = 1500, 8
    normal = rng.uniform(size=n) < 0.3
    y = np.where(normal[:, None], 0, rng.uniform(size=(n, k)) < 0.2).astype(float)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, (n, k)), 0, 1)
    names = [f"F{j}" for j in range(k)]
    base = choose_thresholds(y, p, label_names=names, method="specificity", target=0.9)
    before = normal_flag_rate(np.where(normal, 0.0, 1.0), p, thresholds=np.array([base[n] for n in names]))
    assert before > 0.4  # eight labels at 90% each flag far more than 10% of normals
    capped, floor = cap_normal_flag_rate(
        y, p, normal=normal, label_names=names, thresholds=base, max_rate=0.15
    )
    after = normal_flag_rate(np.where(normal, 0.0, 1.0), p, thresholds=np.array([capped[n] for n in names]))
    assert after <= 0.15 and floor > 0.9
    assert all(capped[n] >= base[n] for n in names)


def test_prior_shift_moves_the_mean_probability_to_the_deployment_prevalence():
    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.uniform(size=n) < 0.76).astype(float)  # a 76%-abnormal calibration set
    z = 1.5 * (2 * y - 1) + rng.normal(0, 1.5, n)
    labels = ["Effusion", "Abnormal"]
    cfg = ModelConfig(backbone="vgg_like", num_classes=2, in_channels=1, width=0.25)
    ckpt = Checkpoint(cfg, labels, PreprocessContract(size=32), dict(build_model(cfg).state_dict()))
    logits = np.column_stack([z, z])
    truth = np.column_stack([y, y])
    plain = calibrate_checkpoint(
        ckpt, y_true=truth, y_score=logits, method="platt", threshold_method="specificity", target=0.9
    )
    moved = calibrate_checkpoint(
        ckpt,
        y_true=truth,
        y_score=logits,
        method="platt",
        threshold_method="specificity",
        target=0.9,
        deployment_prevalence={"Abnormal": 0.46},
    )
    p_plain, p_moved = plain.probabilities(logits), moved.probabilities(logits)
    assert p_plain[:, 1].mean() == pytest.approx(0.76, abs=0.02)
    # on a population with 46% abnormal, the shifted probabilities average 46%
    w = np.where(y == 1, 0.46 / 0.76, 0.54 / 0.24)
    assert np.average(p_moved[:, 1], weights=w) == pytest.approx(0.46, abs=0.03)
    order = np.argsort(p_plain[:, 1], kind="stable")
    assert (np.diff(p_moved[order, 1]) >= -1e-6).all()  # same order (float32 ties aside)
    np.testing.assert_allclose(p_moved[:, 0], p_plain[:, 0])  # other labels untouched
    record = moved.metrics["calibration"]["deployment_prevalence"]["Abnormal"]
    assert record["shift"] == pytest.approx(prior_shift(record["calibration_prevalence"], 0.46))
    # the threshold keeps 90% specificity on the shifted scale too
    t = moved.thresholds["Abnormal"]
    assert float((p_moved[y == 0, 1] < t).mean()) >= 0.9
    assert logit(np.array([0.5]))[0] == pytest.approx(0.0)
