"""Study grouping, aggregation, priority rules and the worklist row/file format (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xraytriage.errors import ConfigError
from xraytriage.triage import (
    PriorityRules,
    SitePriorities,
    UrgencyWeights,
    WorklistRow,
    aggregate_probabilities,
    parse_site_priority,
    read_worklist_csv,
    study_key,
    write_worklist,
)
from xraytriage.triage.console import print_worklist, short_study
from xraytriage.triage.worklist import format_findings, parse_findings, sort_worklist, worklist_columns

LABELS = ["Mass", "Pneumothorax", "Effusion", "No Finding"]


# --- grouping ---------------------------------------------------------------------------------
def test_dicom_study_uid_groups_images_whatever_the_mode():
    meta = {"study_uid": "1.2.3"}
    assert study_key("a/x.dcm", meta, "file") == "1.2.3"
    assert study_key("b/y.dcm", meta, "folder") == "1.2.3"


def test_one_study_per_file_by_default_and_per_parent_folder_in_folder_mode():
    assert study_key("mura/patient1/study1/image1.png") == "mura/patient1/study1/image1.png"
    assert study_key("mura/patient1/study1/image1.png", {}, "folder") == "mura/patient1/study1"
    assert study_key("mura/patient1/study1/image2.png", {}, "folder") == "mura/patient1/study1"
    assert study_key("mura/patient2/study1/image1.png", {}, "folder") == "mura/patient2/study1"


def test_unknown_study_mode_is_rejected():
    with pytest.raises(ConfigError, match="file, folder"):
        study_key("x.png", {}, "patient")


# --- aggregation ------------------------------------------------------------------------------
def test_aggregation_rules():
    probs = np.array([[0.2, 0.9], [0.6, 0.1]])
    np.testing.assert_allclose(aggregate_probabilities(probs, "max"), [0.6, 0.9])
    np.testing.assert_allclose(aggregate_probabilities(probs, "mean"), [0.4, 0.5])
    np.testing.assert_allclose(aggregate_probabilities(probs, "noisy_or"), [1 - 0.8 * 0.4, 1 - 0.1 * 0.9])
    # one image: every rule returns it unchanged
    for method in ("max", "mean", "noisy_or"):
        np.testing.assert_allclose(aggregate_probabilities(probs[:1], method), probs[0])


def test_noisy_or_exceeds_every_image_and_mean_smooths():
    probs = np.array([0.5, 0.5, 0.5])
    assert aggregate_probabilities(probs, "noisy_or") == pytest.approx(0.875)
    assert aggregate_probabilities(probs, "mean") == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        aggregate_probabilities(probs, "median")


# --- priority ---------------------------------------------------------------------------------
def test_priority_is_the_abnormal_probability_without_weights():
    rules = PriorityRules(LABELS)
    assert rules.priority(0.37, np.array([0.9, 0.9, 0.9, 0.1])) == pytest.approx(0.37)


def test_urgency_weights_put_a_likely_pneumothorax_first():
    rules = PriorityRules(LABELS, UrgencyWeights({"pneumothorax": 1.0, "Mass": 0.2}))
    nodule_like = rules.priority(0.80, np.array([0.1, 0.05, 0.1, 0.2]))
    pneumothorax = rules.priority(0.70, np.array([0.05, 0.7, 0.1, 0.3]))
    assert pneumothorax > nodule_like
    # weights only raise: never below the abnormal probability, never above 1
    assert pneumothorax == pytest.approx(1 - 0.3 * (1 - 0.7) * (1 - 0.2 * 0.05))
    assert rules.priority(0.2, np.zeros(4)) == pytest.approx(0.2)
    assert rules.priority(1.0, np.ones(4)) == pytest.approx(1.0)


def test_urgency_config_file_yaml_and_json(tmp_path):
    yml = tmp_path / "urgency.yaml"
    yml.write_text("weights:\n  Pneumothorax: 1.0\n  Effusion: 0.5\n")
    js = tmp_path / "urgency.json"
    js.write_text(json.dumps({"Pneumothorax": 1.0, "Effusion": 0.5}))
    for path in (yml, js):
        np.testing.assert_allclose(UrgencyWeights.load(path).vector(LABELS), [0, 1.0, 0.5, 0])


def test_urgency_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        UrgencyWeights({"Mass": 2})
    with pytest.raises(ConfigError, match="Fracture"):
        PriorityRules(LABELS, UrgencyWeights({"Fracture": 1.0}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        UrgencyWeights.load(bad)


def test_site_priority_levels_and_numbers():
    assert parse_site_priority("STAT") == 1.0
    assert parse_site_priority("high") == 0.8
    assert parse_site_priority("MEDIUM") == 0.5
    assert parse_site_priority("ROUTINE") == 0.0
    assert parse_site_priority("0.65") == pytest.approx(0.65)
    assert parse_site_priority("") is None
    with pytest.raises(ConfigError):
        parse_site_priority("urgent-ish")
    with pytest.raises(ConfigError):
        parse_site_priority("1.5")


def test_never_lower_a_priority_the_site_gave():
    rules = PriorityRules(LABELS)
    probs = np.array([0.1, 0.1, 0.1, 0.9])
    assert rules.priority(0.1, probs, site_priority=1.0) == 1.0  # STAT stays on top
    assert rules.priority(0.9, probs, site_priority=0.5) == pytest.approx(0.9)  # the model may raise it
    assert rules.priority(0.3, probs, site_priority=0.0) == pytest.approx(0.3)  # ROUTINE adds no floor


def test_site_priority_csv_by_study_or_path(tmp_path):
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    table = tmp_path / "site.csv"
    table.write_text(f"study,path,priority\n1.2.3,,STAT\n,{image},0.6\n")
    site = SitePriorities.load(table)
    rules = PriorityRules(LABELS, site=site)
    assert rules.site_priority("1.2.3") == 1.0
    assert rules.site_priority(str(image), [str(image)]) == pytest.approx(0.6)
    assert rules.site_priority("other") is None
    # a DICOM tag and the CSV together: the higher floor wins
    assert rules.site_priority(str(image), [str(image)], [0.8, None]) == pytest.approx(0.8)


def test_site_priority_csv_errors_name_the_file_and_line(tmp_path):
    table = tmp_path / "site.csv"
    table.write_text("study,priority\nA,HIGH\nB,soon\n")
    with pytest.raises(ConfigError, match=r"site\.csv, line 3"):
        SitePriorities.load(table)
    table.write_text("name,level\nA,HIGH\n")
    with pytest.raises(ConfigError, match="'priority' column"):
        SitePriorities.load(table)


# --- worklist rows ----------------------------------------------------------------------------
def _row(study: str, priority: float, **probs: float) -> WorklistRow:
    return WorklistRow(
        study=study, path=f"{study}.png", priority=priority, abnormal=priority, probabilities=probs
    )


def test_findings_list_those_above_threshold_most_probable_first():
    thresholds = {"Mass": 0.5, "Pneumothorax": 0.3, "Effusion": 0.7}
    text = format_findings(
        {"Mass": 0.64, "Pneumothorax": 0.31, "Effusion": 0.81, "No Finding": 0.9}, thresholds
    )
    assert text == "Effusion 0.81; Mass 0.64; Pneumothorax 0.31"
    assert format_findings({"Mass": 0.49, "No Finding": 0.9}, thresholds) == ""


def test_sort_puts_highest_priority_first_and_errors_last_without_rank():
    rows = [
        _row("b", 0.2),
        WorklistRow.error_row("bad", "bad.png", "bad.png: file is empty (0 bytes)"),
        _row("a", 0.9),
        _row("c", 0.5),
    ]
    ordered = sort_worklist(rows)
    assert [r.study for r in ordered] == ["a", "c", "b", "bad"]
    assert [r.rank for r in ordered] == [1, 2, 3, None]


def test_worklist_files_csv_and_json_hold_the_same_rows(tmp_path):
    labels = ["Mass", "Pleural Thickening"]
    rows = sort_worklist(
        [
            _row("s1", 0.7, **{"Mass": 0.7, "Pleural Thickening": 0.123456789}),
            _row("s2", 0.3, **{"Mass": 0.3, "Pleural Thickening": 0.2}),
            WorklistRow.error_row("x", "x.dcm", "x.dcm: modality CT is not a projection radiograph"),
        ]
    )
    rows[0].findings, rows[0].site_priority = "Mass 0.70", 0.5
    rows[0].flagged, rows[1].flagged = True, False
    csv_path, json_path = write_worklist(rows, tmp_path / "out", labels)
    from_json = json.loads(json_path.read_text())
    from_csv = read_worklist_csv(csv_path)
    assert from_csv == from_json
    assert list(from_csv[0]) == worklist_columns(labels)
    assert list(from_csv[0])[:9] == [
        "rank",
        "study",
        "path",
        "priority",
        "abnormal",
        "flagged",
        "status",
        "error",
        "findings",
    ]
    assert [r["flagged"] for r in from_json] == [True, False, None]
    assert from_json[2]["status"] == "error" and from_json[2]["rank"] is None and from_json[2]["Mass"] is None
    assert from_json[0]["Pleural Thickening"] == pytest.approx(0.123457)


def test_console_table_shows_the_top_rows_only():
    from rich.console import Console

    rows = sort_worklist([_row(f"study{i}", i / 10) for i in range(5)])
    rows[0].findings, rows[0].flagged = "Mass 0.40", True
    console = Console(width=120, record=True)
    print_worklist(rows, 5, 1.0, top=2, console=console)
    text = console.export_text()
    assert "study4" in text and "study3" in text and "study2" not in text
    assert text.count("FLAGGED  ") == 1  # one flagged row (the legend explains the word)
    assert "Mass 0.40" in text
    assert short_study("/very/long/folder/name/that/goes/on/patient00001/study1", 24).endswith(
        "patient00001/study1"
    )


def test_console_shows_the_top_three_findings_and_counts_the_rest():
    from xraytriage.triage.console import top_findings

    assert top_findings("") == "-"
    assert top_findings("Mass 0.80; Nodule 0.40") == "Mass 0.80; Nodule 0.40"
    cell = "Effusion 0.81; Mass 0.64; Nodule 0.30; Edema 0.20; Hernia 0.10"
    assert top_findings(cell) == "Effusion 0.81; Mass 0.64; Nodule 0.30 (+2 more)"


def test_parse_findings_inverts_format_findings():
    probabilities = {"Pleural Thickening": 0.812, "Mass": 0.64, "Nodule": 0.05}
    text = format_findings(probabilities, {"Pleural Thickening": 0.5, "Mass": 0.5, "Nodule": 0.5})
    assert parse_findings(text) == [("Pleural Thickening", 0.81), ("Mass", 0.64)]
    assert parse_findings("") == [] and parse_findings(None) == []
