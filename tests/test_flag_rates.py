"""`calibrate`'s critical tier and expected flag rates (issue 22 items 3 and 5), on made-up
held-out predictions where the right answer can be counted by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from xraytriage.errors import ConfigError
from xraytriage.evaluate.flag_rates import critical_thresholds, expected_rates, resolve_critical

NAMES = ["Mass", "Pneumothorax", "No Finding", "Abnormal"]


def _held_out(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mass = (rng.random(n) < 0.2).astype(float)
    ptx = (rng.random(n) < 0.05).astype(float)
    abnormal = np.maximum(mass, ptx)
    labels = np.stack([mass, ptx, 1 - abnormal, abnormal], axis=1)
    probs = np.clip(labels * 0.35 + rng.random(labels.shape) * 0.65, 0, 1)
    return labels, probs


def test_critical_threshold_keeps_the_specificity_and_never_undercuts_the_finding():
    labels, probs = _held_out()
    out = critical_thresholds(
        labels,
        probs,
        label_names=NAMES,
        critical=["Pneumothorax"],
        thresholds={"Pneumothorax": 0.2},
        specificity=0.99,
    )
    t = out["Pneumothorax"]
    negatives = probs[labels[:, 1] == 0, 1]
    assert (negatives >= t).mean() <= 0.01
    assert (negatives >= t).mean() > 0.005  # the lowest such threshold, not an arbitrary high one
    high = critical_thresholds(
        labels,
        probs,
        label_names=NAMES,
        critical=["Pneumothorax"],
        thresholds={"Pneumothorax": 0.999},
        specificity=0.99,
    )
    assert high["Pneumothorax"] == pytest.approx(0.999)
    with pytest.raises(ConfigError, match="specificity"):
        critical_thresholds(
            labels, probs, label_names=NAMES, critical=["Pneumothorax"], thresholds={}, specificity=1.0
        )
    unknown = labels.copy()
    unknown[:, 1] = np.nan  # no ground truth for Pneumothorax: asked by name, an error; by default, left out
    with pytest.raises(ConfigError, match="Pneumothorax"):
        critical_thresholds(unknown, probs, label_names=NAMES, critical=["Pneumothorax"], thresholds={})
    assert (
        critical_thresholds(
            unknown, probs, label_names=NAMES, critical=["Pneumothorax"], thresholds={}, required=False
        )
        == {}
    )


def test_critical_findings_default_to_pneumothorax_and_can_be_turned_off():
    findings = ["Mass", "Pneumothorax"]
    assert resolve_critical(findings, [], NAMES) == ["Pneumothorax"]
    assert resolve_critical(["Mass"], [], NAMES) == []
    assert resolve_critical(findings, ["none"], NAMES) == []
    assert resolve_critical(findings, ["mass", "Pneumothorax"], NAMES) == ["Mass", "Pneumothorax"]
    with pytest.raises(ConfigError, match=r"no such finding.*Mass, Pneumothorax"):
        resolve_critical(findings, ["Hernia"], NAMES)


def test_expected_rates_mix_normal_and_abnormal_rates_to_the_deployment_prevalence():
    labels, probs = _held_out()
    thresholds = {"Mass": 0.5, "Pneumothorax": 0.6}
    critical = {"Pneumothorax": 0.9}
    p_abn = probs[:, 3]
    own = expected_rates(
        labels,
        probs,
        abnormal_score=p_abn,
        label_names=NAMES,
        findings=["Mass", "Pneumothorax"],
        thresholds=thresholds,
        flag_at=0.7,
        critical=critical,
    )
    assert own["flagged"] == pytest.approx((p_abn >= 0.7).mean())
    assert own["findings"]["Mass"] == pytest.approx((probs[:, 0] >= 0.5).mean())
    assert own["critical"] == pytest.approx((probs[:, 1] >= 0.9).mean())
    assert own["n"] == len(labels)
    mixed = expected_rates(
        labels,
        probs,
        abnormal_score=p_abn,
        label_names=NAMES,
        findings=["Mass", "Pneumothorax"],
        thresholds=thresholds,
        flag_at=0.7,
        critical=critical,
        prevalence=0.5,
    )
    abn = labels[:, 3] == 1
    by_hand = 0.5 * (p_abn[abn] >= 0.7).mean() + 0.5 * (p_abn[~abn] >= 0.7).mean()
    assert mixed["flagged"] == pytest.approx(by_hand)
    assert mixed["flagged"] > own["flagged"]  # 50% abnormal instead of the data's ~24%


def test_calibrate_cli_stores_critical_thresholds_and_expected_rates(tiny_checkpoint_path, tmp_path, capsys):
    from xraytriage.cli.main import main
    from xraytriage.models import load_checkpoint

    names = load_checkpoint(tiny_checkpoint_path).label_names
    rng = np.random.default_rng(1)
    n = 300
    frame = pd.DataFrame({"path": [f"img{i}.png" for i in range(n)]})
    disease = [name for name in names if name not in ("No Finding", "Abnormal")]
    for name in disease:
        y = (rng.random(n) < 0.3).astype(float)
        frame[name] = y
        frame[f"prob_{name}"] = 1 / (1 + np.exp(-((2 * y - 1) * 1.5 + rng.normal(0, 1, n))))
    for name in set(names) - set(disease):
        abnormal = frame[disease].max(axis=1).to_numpy()
        y = 1 - abnormal if name == "No Finding" else abnormal
        frame[name] = y
        frame[f"prob_{name}"] = 1 / (1 + np.exp(-((2 * y - 1) * 1.5 + rng.normal(0, 1, n))))
    preds = tmp_path / "oof.csv"
    frame.to_csv(preds, index=False)
    out = tmp_path / "cal.pt"
    args = ["calibrate", "--model", str(tiny_checkpoint_path), "--predictions", str(preds)]
    assert (
        main([*args, "--critical", "Effusion", "--critical-specificity", "0.98", "--output", str(out)]) == 0
    )
    ckpt = load_checkpoint(out)
    assert list(ckpt.critical) == ["Effusion"]
    assert ckpt.critical["Effusion"] >= ckpt.thresholds["Effusion"]
    rates = ckpt.expected_rates
    assert set(rates["findings"]) == set(ckpt.findings) and 0 < rates["flagged"] < 1
    assert rates["n"] == n and rates["source"] == str(preds)
    printed = capsys.readouterr().out
    assert "critical at" in printed and "expected at deployment" in printed
    # no Pneumothorax in this model: no critical tier by default
    assert main([*args, "--output", str(tmp_path / "plain.pt")]) == 0
    assert load_checkpoint(tmp_path / "plain.pt").critical == {}
    assert main([*args, "--critical", "Hernia", "--output", str(tmp_path / "x.pt")]) == 2
    # only the critical tier and the expected rates, the calibration and thresholds kept as they are
    kept = tmp_path / "kept.pt"
    keep = ["calibrate", "--model", str(out), "--predictions", str(preds), "--keep-calibration"]
    assert main([*keep, "--critical", "Mass", "--output", str(kept)]) == 0
    again = load_checkpoint(kept)
    assert again.calibration == ckpt.calibration and again.thresholds == ckpt.thresholds
    assert list(again.critical) == ["Mass"] and again.expected_rates["n"] == n
