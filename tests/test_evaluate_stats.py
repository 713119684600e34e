"""Bootstrap CIs (patient-level) and the DeLong test on known cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from xraytriage.evaluate.bootstrap import (
    ClusterSampler,
    bootstrap_label_intervals,
    bootstrap_metric,
    paired_bootstrap_difference,
)
from xraytriage.evaluate.compare import delong_auc_variance, delong_ci, delong_covariance, delong_test


def _scores(seed: int, n: int = 300, signal: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    return y, rng, y * signal + rng.normal(0, 1, n)


# --- bootstrap ------------------------------------------------------------------------------
def test_perfect_separation_gives_ci_of_one():
    y = np.array([0, 0, 0, 1, 1, 1] * 10, dtype=float)
    p = y * 0.5 + np.linspace(0, 0.4, 60)
    ci = bootstrap_metric(y, p, metric="auc", n_boot=200, seed=0)
    assert (ci["estimate"], ci["low"], ci["high"]) == (1.0, 1.0, 1.0)


def test_random_scores_ci_covers_half():
    y, rng, _ = _scores(0, n=400)
    ci = bootstrap_metric(y, rng.random(400), metric="auc", n_boot=300, seed=1)
    assert ci["low"] < 0.5 < ci["high"]
    assert ci["high"] - ci["low"] < 0.2


def test_bootstrap_is_seeded():
    y, _, s = _scores(1)
    a = bootstrap_metric(y, s, metric="auc", n_boot=100, seed=7)
    b = bootstrap_metric(y, s, metric="auc", n_boot=100, seed=7)
    c = bootstrap_metric(y, s, metric="auc", n_boot=100, seed=8)
    assert a == b and a != c
    assert a["estimate"] == pytest.approx(roc_auc_score(y, s))


def test_cluster_sampler_keeps_patients_together():
    groups = np.repeat([f"P{i}" for i in range(30)], np.arange(1, 31) % 4 + 1)  # 1-4 images each
    sampler = ClusterSampler(groups)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = sampler.sample(rng)
        drawn = groups[idx]
        assert len(set(drawn)) <= 30
        for patient in set(drawn):
            size = int((groups == patient).sum())
            count = int((drawn == patient).sum())
            assert count % size == 0  # every draw of a patient brings all of its images
            # and each image of the patient is drawn equally often
            rows = idx[drawn == patient]
            assert len(set(np.bincount(rows, minlength=len(groups))[groups == patient])) == 1


def test_patient_resampling_widens_ci_for_correlated_images():
    # 40 patients x 10 near-identical images: the information is 40 cases, not 400
    rng = np.random.default_rng(3)
    patient_y = rng.integers(0, 2, 40).astype(float)
    patient_s = patient_y * 0.8 + rng.normal(0, 1, 40)
    y = np.repeat(patient_y, 10)
    s = np.repeat(patient_s, 10) + rng.normal(0, 0.01, 400)
    groups = np.repeat(np.arange(40), 10)
    by_image = bootstrap_metric(y, s, metric="auc", groups=None, n_boot=300, seed=0)
    by_patient = bootstrap_metric(y, s, metric="auc", groups=groups, n_boot=300, seed=0)
    assert (by_patient["high"] - by_patient["low"]) > 2 * (by_image["high"] - by_image["low"])


def test_label_intervals_mask_nan_and_cover_macro():
    y, rng, s = _scores(4, n=200)
    ys = np.column_stack([y, 1 - y])
    ps = np.column_stack([s, -s + rng.normal(0, 2, 200)])
    ys[:30, 1] = np.nan
    out = bootstrap_label_intervals(
        ys, ps, label_names=["a", "b"], groups=np.arange(200) // 2, n_boot=150, seed=0
    )
    for name in ("a", "b"):
        ci = out["labels"][name]["auc"]
        assert ci["low"] <= ci["estimate"] <= ci["high"]
    keep = ~np.isnan(ys[:, 1])
    assert out["labels"]["b"]["auc"]["estimate"] == pytest.approx(roc_auc_score(ys[keep, 1], ps[keep, 1]))
    assert out["macro"]["auc"]["low"] <= out["macro"]["auc"]["estimate"] <= out["macro"]["auc"]["high"]
    assert out["resampling"] == "patient"


# --- DeLong ---------------------------------------------------------------------------------
def test_delong_variance_by_hand():
    # positives 0.9, 0.6; negatives 0.7, 0.2. Placements: positives (1, .5), negatives (.5, 1)
    # AUC .75; var = var(1,.5)/2 + var(.5,1)/2 = .125/2 + .125/2 = .125
    auc, var = delong_auc_variance(np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.7, 0.2]))
    assert auc == pytest.approx(0.75)
    assert var == pytest.approx(0.125)


def _slow_delong(y, a, b):
    """Textbook DeLong with the O(m*n) kernel, to check the fast midrank version."""
    out = []
    for s in (a, b):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))
    m, n = (y == 1).sum(), (y == 0).sum()
    v10 = np.vstack([o[1] for o in out])
    v01 = np.vstack([o[2] for o in out])
    cov = np.cov(v10) / m + np.cov(v01) / n
    return np.array([o[0] for o in out]), cov


def test_fast_delong_equals_textbook_kernel_with_ties():
    y, rng, s = _scores(5, n=150)
    a = np.round(s, 1)  # ties
    b = np.round(s + rng.normal(0, 1, 150), 1)
    aucs, cov = delong_covariance(y, np.vstack([a, b]))
    ref_aucs, ref_cov = _slow_delong(y, a, b)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    assert aucs[0] == pytest.approx(roc_auc_score(y, a))


def test_identical_predictions_give_p_one():
    y, _, s = _scores(6)
    result = delong_test(y, s, y_score_b=s.copy())
    assert result["difference"] == 0.0 and result["p_value"] == 1.0
    # a monotone transform ranks identically: same AUC, p = 1
    assert delong_test(y, s, y_score_b=np.exp(s))["p_value"] == pytest.approx(1.0)


def test_delong_detects_a_clearly_better_model():
    y, rng, s = _scores(7, n=400, signal=2.0)
    weak = y * 0.3 + rng.normal(0, 1, 400)
    result = delong_test(y, s, y_score_b=weak)
    assert result["difference"] > 0.1 and result["p_value"] < 1e-4


def test_delong_agrees_with_paired_bootstrap():
    y, rng, s = _scores(8, n=500, signal=1.2)
    other = s + rng.normal(0, 0.8, 500)
    test = delong_test(y, s, y_score_b=other)
    boot = paired_bootstrap_difference(y, s, y_score_b=other, metric="auc", groups=None, n_boot=1000, seed=0)
    assert boot["difference"] == pytest.approx(test["difference"])
    assert boot["se"] == pytest.approx(test["se"], rel=0.15)  # two estimates of one standard error
    z_boot = boot["difference"] / boot["se"]
    assert z_boot == pytest.approx(test["z"], abs=0.4)


def test_delong_ci_contains_auc_and_narrows_with_n():
    y, _, s = _scores(9, n=100)
    small = delong_ci(y, s)
    y2, _, s2 = _scores(9, n=2000)
    large = delong_ci(y2, s2)
    assert small["low"] < small["auc"] < small["high"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 2


def test_paired_bootstrap_identical_models_p_one():
    y, _, s = _scores(10)
    out = paired_bootstrap_difference(
        y, s, y_score_b=s, metric="auc", groups=np.arange(300) // 3, n_boot=100, seed=0
    )
    assert out["difference"] == 0.0 and out["p_value"] == 1.0 and out["low"] == out["high"] == 0.0


def test_replicate_weights_are_the_sampled_rows():
    groups = np.repeat(np.arange(25), 3)
    sampler = ClusterSampler(groups)
    idx = sampler.sample(np.random.default_rng(11))
    weights = sampler.weights(np.random.default_rng(11))
    np.testing.assert_array_equal(weights, np.bincount(idx, minlength=len(groups)))


def test_weighted_replicate_metrics_equal_sklearn_on_resampled_arrays():
    from sklearn.metrics import average_precision_score

    from xraytriage.evaluate.bootstrap import WeightedRanking

    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 120).astype(float)
    p = np.round(rng.random(120), 1)  # ties
    ranking = WeightedRanking(y, p)
    sampler = ClusterSampler(np.arange(120) // 4)
    for _ in range(20):
        idx = sampler.sample(rng)
        w = np.bincount(idx, minlength=120).astype(float)
        assert ranking.auc(w) == pytest.approx(roc_auc_score(y[idx], p[idx]), abs=1e-12)
        assert ranking.average_precision(w) == pytest.approx(
            average_precision_score(y[idx], p[idx]), abs=1e-12
        )


def test_custom_metric_callable_is_bootstrapped_too():
    y, _, s = _scores(13, n=100)
    ci = bootstrap_metric(y, s, metric=lambda yy, pp: float(np.mean(pp[yy == 1])), n_boot=100, seed=0)
    assert ci["low"] <= ci["estimate"] <= ci["high"]


def test_label_without_any_known_value_gives_nan_not_error():
    y, _, s = _scores(14, n=60)
    ys = np.column_stack([y, np.full(60, np.nan)])
    out = bootstrap_label_intervals(ys, np.column_stack([s, s]), label_names=["known", "unknown"], n_boot=20)
    assert np.isnan(out["labels"]["unknown"]["auc"]["estimate"]) and np.isnan(
        out["labels"]["unknown"]["auc"]["low"]
    )
    assert out["macro"]["auc"]["estimate"] == pytest.approx(out["labels"]["known"]["auc"]["estimate"])
