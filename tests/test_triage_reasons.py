"""A reason for every flag and the critical tier (issue 22 item 3): the rule on small made-up
numbers, the order (critical first), the files and console, and on real NIH images with the
bundled model: no flagged row without a reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from xraytriage.triage import WorklistRow, read_worklist_csv, write_worklist
from xraytriage.triage.console import worklist_lines
from xraytriage.triage.reasons import (
    TIER_CRITICAL,
    TIER_FLAGGED,
    TIER_ROUTINE,
    critical_findings,
    flag_reason,
    study_tier,
    tier_rank,
)
from xraytriage.triage.worklist import sort_worklist, worklist_columns

THRESHOLDS = {"Mass": 0.3, "Pneumothorax": 0.2, "Effusion": 0.5}


def test_reason_names_the_findings_above_threshold_most_probable_first():
    probs = {"Mass": 0.41, "Pneumothorax": 0.1, "Effusion": 0.8, "No Finding": 0.2}
    reason = flag_reason(probs, THRESHOLDS, abnormal=0.9, flag_at=0.6, flagged=True)
    assert reason == "Effusion 0.80 >= 0.50; Mass 0.41 >= 0.30"


def test_reason_without_a_finding_states_the_study_threshold():
    probs = {"Mass": 0.1, "Pneumothorax": 0.1, "Effusion": 0.2}
    reason = flag_reason(probs, THRESHOLDS, abnormal=0.71, flag_at=0.66, flagged=True)
    assert reason == (
        "abnormal, no single finding above its threshold (P(abnormal) 0.71 >= study threshold 0.66)"
    )
    # a routine study has no reason, even with a finding listed below the study flag
    assert flag_reason({"Mass": 0.5}, THRESHOLDS, abnormal=0.3, flag_at=0.66, flagged=False) == ""


def test_critical_tier_needs_its_own_threshold_and_leads_the_reason():
    critical = {"Pneumothorax": 0.6}
    probs = {"Mass": 0.41, "Pneumothorax": 0.5, "Effusion": 0.1}
    # above the finding's threshold, below the critical one: flagged, not critical
    assert critical_findings(probs, critical) == []
    assert study_tier(True, critical_findings(probs, critical)) == TIER_FLAGGED
    probs["Pneumothorax"] = 0.7
    hits = critical_findings(probs, critical)
    assert hits == ["Pneumothorax"] and study_tier(False, hits) == TIER_CRITICAL
    reason = flag_reason(probs, THRESHOLDS, abnormal=0.5, flag_at=0.66, flagged=False, critical=critical)
    assert reason == "CRITICAL Pneumothorax 0.70 >= 0.60; Mass 0.41 >= 0.30"
    assert study_tier(False, []) == TIER_ROUTINE
    assert tier_rank(TIER_CRITICAL) > tier_rank(TIER_FLAGGED) == tier_rank(TIER_ROUTINE) == tier_rank(None)


def _row(study: str, priority: float, tier: str = TIER_ROUTINE) -> WorklistRow:
    return WorklistRow(study=study, path=f"{study}.png", priority=priority, abnormal=priority, tier=tier)


def test_critical_studies_sort_first_then_priority_and_stat_stays_on_top():
    stat = dataclasses.replace(_row("s", 1.0), site_priority=1.0)  # model 0.1, the site said STAT
    high = dataclasses.replace(_row("h", 0.96), site_priority=0.8)  # HIGH is a floor, not a jump
    rows = sort_worklist(
        [
            _row("a", 0.95, TIER_FLAGGED),
            _row("b", 0.40, TIER_CRITICAL),
            _row("c", 0.20),
            _row("d", 0.70, TIER_CRITICAL),
            high,
            stat,
            WorklistRow.error_row("e", "e.png", "e.png: unreadable"),
        ]
    )
    assert [r.study for r in rows] == ["s", "d", "b", "h", "a", "c", "e"]
    assert [r.rank for r in rows] == [1, 2, 3, 4, 5, 6, None]
    assert tier_rank(TIER_ROUTINE, 1.0) == tier_rank(TIER_CRITICAL) == 1 and tier_rank(TIER_ROUTINE, 0.8) == 0


def test_files_and_console_carry_tier_reason_and_ood_score(tmp_path):

    labels = ["Mass", "Pneumothorax"]
    crit = dataclasses.replace(
        _row("crit", 0.4, TIER_CRITICAL),
        flagged=False,
        flag_reason="CRITICAL Pneumothorax 0.70 >= 0.60",
        findings="Pneumothorax 0.70",
        probabilities={"Mass": 0.1, "Pneumothorax": 0.7},
        ood_score=1.25,
    )
    abnormal = dataclasses.replace(
        _row("abn", 0.9, TIER_FLAGGED),
        flagged=True,
        flag_reason="abnormal, no single finding above its threshold (P(abnormal) 0.90 >= study threshold 0.66)",
        probabilities={"Mass": 0.1, "Pneumothorax": 0.1},
    )
    rows = sort_worklist([abnormal, crit])
    csv_path, _ = write_worklist(rows, tmp_path, labels)
    back = read_worklist_csv(csv_path)
    assert list(back[0]) == worklist_columns(labels)
    assert [r["tier"] for r in back] == ["critical", "flagged"]
    assert back[0]["flag_reason"] == "CRITICAL Pneumothorax 0.70 >= 0.60"
    assert back[0]["ood_score"] == pytest.approx(1.25) and back[1]["ood_score"] is None
    text = "\n".join(line.plain for line in worklist_lines(rows, top=5))
    assert "CRITICAL" in text and "FLAGGED" in text
    assert "why flagged: abnormal, no single finding" in text


@pytest.fixture(scope="module")
def bundled_worklist(shared_data):
    """The bundled model's worklist of one real NIH collection (every image, its own study)."""
    from xraytriage.cli.common import default_model_path
    from xraytriage.models import load_checkpoint
    from xraytriage.models.inference import make_predictor
    from xraytriage.triage import TriageEngine, TriageOptions

    checkpoint = load_checkpoint(default_model_path())
    images = sorted((shared_data / "nih" / "images").glob("*.png"))[:200]
    engine = TriageEngine(make_predictor(checkpoint, "onnx"), TriageOptions(workers=0, progress=False))
    return checkpoint, engine.run(images)


def test_no_flagged_row_without_a_reason_on_real_nih_images(bundled_worklist):
    checkpoint, result = bundled_worklist
    rows = [r for r in result.rows if r.ok]
    assert len(rows) == result.images_total > 0
    flagged = [r for r in rows if r.flagged or r.tier == TIER_CRITICAL]
    assert flagged, "the bundled model flagged none of these NIH images"
    assert all(r.flag_reason for r in flagged)
    assert all(not r.flag_reason for r in rows if r not in flagged)
    # studies flagged with no finding above threshold say so, with the study threshold
    for r in flagged:
        if not r.findings and r.tier != TIER_CRITICAL:
            assert f"study threshold {checkpoint.study_flag_threshold:.2f}" in r.flag_reason
    # the tiers follow the rule, and critical studies lead the list
    tiers = [r.tier for r in rows]
    assert set(tiers) <= {TIER_CRITICAL, TIER_FLAGGED, TIER_ROUTINE}
    n_critical = tiers.count(TIER_CRITICAL)
    assert tiers[:n_critical] == [TIER_CRITICAL] * n_critical
    for r in rows:
        hits = critical_findings(r.probabilities, checkpoint.critical)
        assert r.tier == study_tier(r.flagged, hits)  # (no site priority here: PNGs carry none)
    ranked = [r.priority for r in rows[n_critical:]]
    assert ranked == sorted(ranked, reverse=True)
    assert np.all(np.diff([r.rank for r in rows]) == 1)


def test_checkpoint_file_and_onnx_head_keep_critical_and_expected_rates(tmp_path):
    """The new keys survive save/load and the ONNX metadata; files without them get none."""
    from xraytriage.cli.common import default_model_path
    from xraytriage.models import load_checkpoint
    from xraytriage.models.onnx_export import META_PREFIX, head_checkpoint, onnx_metadata

    checkpoint = load_checkpoint(default_model_path())
    bare = head_checkpoint({k[len(META_PREFIX) :]: v for k, v in onnx_metadata(checkpoint).items()})
    assert bare.critical == checkpoint.critical and bare.expected_rates == checkpoint.expected_rates
    checkpoint.critical = {"Pneumothorax": 0.61}
    checkpoint.expected_rates = {"flagged": 0.3, "findings": {"Pneumothorax": 0.04}, "critical": 0.01}
    again = load_checkpoint(checkpoint.save(tmp_path / "m.pt"))
    assert again.critical == {"Pneumothorax": pytest.approx(0.61)}
    assert again.expected_rates == checkpoint.expected_rates
    head = head_checkpoint({k[len(META_PREFIX) :]: v for k, v in onnx_metadata(checkpoint).items()})
    assert head.critical == again.critical and head.expected_rates == again.expected_rates
    data = checkpoint.to_dict()
    for key in ("critical", "expected_rates"):
        data.pop(key)
    from xraytriage.models.checkpoint import Checkpoint

    old = Checkpoint.from_dict(data)
    assert old.critical == {} and old.expected_rates is None
