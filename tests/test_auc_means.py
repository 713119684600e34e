"""Every AUC mean is named by what it averages (xraytriage.auc_means)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xraytriage.auc_means import (
    ALL_OUTPUTS,
    MEAN_14_FINDINGS,
    auc_means,
    mean_definitions,
    primary_mean_name,
    read_mean,
    resolve_monitor,
    training_mean_names,
)
from xraytriage.labels import ABNORMAL, CHEXPERT_OBSERVATIONS, NIH_FINDINGS, NO_FINDING

NIH_OUTPUTS = [*NIH_FINDINGS, NO_FINDING, ABNORMAL]


def test_nih_model_reports_the_14_findings_first_and_every_output_apart():
    definitions = mean_definitions(NIH_OUTPUTS)
    assert list(definitions) == [MEAN_14_FINDINGS, ALL_OUTPUTS, "auc_abnormal", "auc_no_finding"]
    assert definitions[MEAN_14_FINDINGS] == list(NIH_FINDINGS)
    assert definitions[ALL_OUTPUTS] == NIH_OUTPUTS
    rng = np.random.default_rng(0)
    aucs = dict(zip(NIH_OUTPUTS, rng.uniform(0.6, 0.9, len(NIH_OUTPUTS)), strict=True))
    aucs[NO_FINDING], aucs[ABNORMAL] = 0.95, 0.97  # the easy outputs lift an all-output mean
    means = auc_means(aucs)
    assert means[MEAN_14_FINDINGS] == pytest.approx(np.mean([aucs[n] for n in NIH_FINDINGS]))
    assert means[ALL_OUTPUTS] == pytest.approx(np.mean(list(aucs.values())))
    assert means[ALL_OUTPUTS] > means[MEAN_14_FINDINGS]
    assert means["auc_abnormal"] == 0.97 and means["auc_no_finding"] == 0.95


def test_other_label_sets_are_never_called_14_findings():
    assert primary_mean_name(CHEXPERT_OBSERVATIONS) == "mean_auc_12_findings"  # no No Finding / devices
    assert primary_mean_name(["Abnormal"]) == "auc_abnormal"  # MURA
    assert primary_mean_name(["Pneumonia", "Abnormal"]) == "auc_pneumonia"  # pediatric folder
    assert primary_mean_name(NIH_FINDINGS[:13]) == "mean_auc_13_findings"
    assert primary_mean_name(["normal", "covid", "pneumonia"]) == "mean_auc_2_findings"
    # an evaluation that scores 2 of a model's 16 outputs does not call their mean "all outputs"
    scored = mean_definitions(["Pneumonia", "Abnormal"], outputs=NIH_OUTPUTS)
    assert list(scored) == ["auc_pneumonia", "mean_auc_2_labels", "auc_abnormal"]
    for labels in (CHEXPERT_OBSERVATIONS, ["Abnormal"], ["Pneumonia", "Abnormal"], NIH_FINDINGS[:13]):
        assert MEAN_14_FINDINGS not in mean_definitions(labels)


def test_undefined_aucs_are_left_out_of_a_mean():
    means = auc_means({"Mass": 0.8, "Nodule": math.nan, "No Finding": 0.6})
    assert means["mean_auc_2_findings"] == 0.8 and means[ALL_OUTPUTS] == pytest.approx(0.7)


def test_early_stopping_default_and_old_configs_resolve_to_the_primary_mean():
    assert resolve_monitor(MEAN_14_FINDINGS, NIH_OUTPUTS) == MEAN_14_FINDINGS
    assert resolve_monitor("mean_auc", NIH_OUTPUTS) == MEAN_14_FINDINGS  # old configs
    assert resolve_monitor(MEAN_14_FINDINGS, ["Mass", "Effusion", "No Finding"]) == "mean_auc_2_findings"
    assert resolve_monitor("mean_auc", ["Abnormal"]) == "auc/Abnormal"  # MURA: one label
    assert resolve_monitor(ALL_OUTPUTS, NIH_OUTPUTS) == ALL_OUTPUTS
    assert resolve_monitor("val_loss", NIH_OUTPUTS) == "val_loss"
    assert training_mean_names(NIH_OUTPUTS) == [MEAN_14_FINDINGS, ALL_OUTPUTS]


def test_files_written_before_the_rule_are_read_as_the_mean_of_every_output():
    assert read_mean({"mean_auc": 0.81}, ALL_OUTPUTS) == 0.81
    assert math.isnan(read_mean({"mean_auc": 0.81}, MEAN_14_FINDINGS))


def test_config_accepts_named_means_and_old_mean_auc():
    from xraytriage.errors import ConfigError
    from xraytriage.train.config import TrainConfig

    base = {"data": {"kind": "csv", "options": {"csv": "x.csv"}}}
    assert TrainConfig.from_dict(base).early_stopping.metric == MEAN_14_FINDINGS
    for metric in ("mean_auc", ALL_OUTPUTS, "auc/Mass", "auc_abnormal", "val_loss"):
        assert (
            TrainConfig.from_dict({**base, "early_stopping": {"metric": metric}}).early_stopping.metric
            == metric
        )
    with pytest.raises(ConfigError, match=r"early_stopping\.metric"):
        TrainConfig.from_dict({**base, "early_stopping": {"metric": "accuracy"}})
