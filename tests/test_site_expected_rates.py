"""Issue 22 wired end to end: a site calibration gives the drift monitor its expected rates
(in the format it reads) and keeps the critical tier above the findings' new thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xraytriage.evaluate.site_calibration import raise_critical, site_expected_rates
from xraytriage.models import load_checkpoint
from xraytriage.serving.drift import DEPARTURE, OK, DriftMonitor
from xraytriage.serving.records import StudyOutcome


def test_expected_rates_among_normals_and_mixed_at_a_prevalence():
    listed = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=bool)
    flagged = listed.any(axis=1)
    critical = np.array([1, 0, 0, 0], dtype=bool)
    ood = np.array([0.5, 1.0, 2.0, 0.2])
    rates = site_expected_rates(listed, flagged, critical, ood, ["A", "B"], source="normals")
    assert rates == {
        "flagged": 0.5, "findings": {"A": 0.25, "B": 0.25}, "critical": 0.25, "n": 4,
        "prevalence": None, "population": "normal", "source": "normals", "ood": 0.5,
    }  # fmt: skip
    truth = np.array([1, 0, 1, 0])  # flagged: both abnormal (1.0), no normal (0.0)
    mixed = site_expected_rates(listed, flagged, critical, None, ["A", "B"], truth, prevalence=0.2)
    assert mixed["population"] == "site" and "ood" not in mixed
    assert mixed["flagged"] == pytest.approx(0.2) and mixed["critical"] == pytest.approx(0.1)
    own = site_expected_rates(listed, flagged, critical, ood, ["A", "B"], truth)
    assert own["prevalence"] == 0.5 and own["flagged"] == pytest.approx(0.5)


def test_critical_thresholds_never_fall_below_the_findings_new_threshold():
    critical = {"Pneumothorax": 0.40, "Mass": 0.90}
    raised = raise_critical(critical, {"Pneumothorax": 0.55, "Mass": 0.30, "Other": 0.99})
    assert critical == {"Pneumothorax": 0.55, "Mass": 0.90}
    assert raised == {"Pneumothorax": (0.40, 0.55)}


def _outcomes(n: int, flag_rate: float, seed: int) -> list[StudyOutcome]:
    rng = np.random.default_rng(seed)
    return [StudyOutcome(0.0, ("A",) if rng.random() < flag_rate else (), "routine", None) for _ in range(n)]


def test_rates_among_normals_are_a_floor_for_the_drift_monitor():
    expected = {"flagged": 0.10, "findings": {"A": 0.10}, "critical": 0.0, "population": "normal"}
    monitor = DriftMonitor(expected, None, window=400, min_studies=100)
    assert monitor.check(_outcomes(400, 0.30, seed=0))[0].status == OK  # abnormal studies add flags
    assert monitor.check(_outcomes(400, 0.10, seed=1))[0].status == OK
    silent = monitor.check(_outcomes(400, 0.01, seed=2))[0]  # fewer flags than even the normals give
    assert silent.status == DEPARTURE and {c.name for c in silent.departures} == {"flagged", "A"}
    centred = DriftMonitor({**expected, "population": "site"}, None, window=400, min_studies=100)
    assert centred.check(_outcomes(400, 0.30, seed=0))[0].status == DEPARTURE


def _site(tmp_path: Path, files: list[Path], name: str) -> Path:
    site = tmp_path / name
    site.mkdir()
    for f in files:
        (site / f.name).symlink_to(f)
    return site


def test_calibrate_site_normals_writes_expected_rates_and_raises_critical(
    tiny_checkpoint_path, synthetic_dir, tmp_path, capsys
):
    from xraytriage.cli.main import main

    labels = pd.read_csv(synthetic_dir / "labels.csv")
    normal_files = [synthetic_dir / p for p in labels.loc[labels["No Finding"] == 1, "path"]][:30]
    model = load_checkpoint(tiny_checkpoint_path)
    crit = model.findings[0]
    model.critical = {crit: 1e-6}  # far below any threshold a site sets
    model.expected_rates = {"flagged": 0.9, "ood_threshold": 7.0, "extra": "kept"}
    source = model.save(tmp_path / "with-critical.pt")
    out = tmp_path / "site.pt"
    site = _site(tmp_path, normal_files, "normals")
    argv = ["calibrate", "--model", str(source), "--site-normals", str(site), "--workers", "0"]
    assert main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    calibrated = load_checkpoint(out)
    assert calibrated.critical[crit] == pytest.approx(calibrated.threshold(crit))
    assert f"critical {crit}: threshold raised" in printed
    rates = calibrated.expected_rates
    report = calibrated.metrics["site_calibration"]
    assert rates["population"] == "normal" and rates["n"] == 30 and rates["prevalence"] is None
    assert rates["flagged"] == pytest.approx(report["flagged"]["rate"])
    assert set(rates["findings"]) == set(calibrated.findings)
    for name in calibrated.findings:
        assert rates["findings"][name] == pytest.approx(report["findings"][name]["rate"])
    assert rates["critical"] == pytest.approx(report["findings"][crit]["rate"])  # critical at its threshold
    assert "ood_threshold" not in rates and rates["extra"] == "kept"
    assert "expects among normal studies" in printed
    saved = json.loads(out.with_suffix(".calibration.json").read_text())
    assert saved["site_calibration"]["expected_rates"]["flagged"] == rates["flagged"]
    # a labelled sample with abnormal studies: rates mixed at the deployment prevalence
    sample = tmp_path / "labels.csv"
    pd.DataFrame(
        {
            "file": [str(synthetic_dir / p) for p in labels["path"]],
            "label": np.where(labels["No Finding"] == 1, "normal", "abnormal"),
        }
    ).to_csv(sample, index=False)
    mixed_out = tmp_path / "site-mixed.pt"
    argv += ["--site-labels", str(sample), "--deployment-prevalence", "0.3"]
    assert main([*argv, "--output", str(mixed_out)]) == 0
    mixed = load_checkpoint(mixed_out).expected_rates
    assert mixed["population"] == "site" and mixed["prevalence"] == 0.3
    assert mixed["n"] == len(labels) - 30 and mixed["source"] == str(sample)


@pytest.mark.slow
def test_site_normals_of_children_give_the_ood_share_the_service_counts(shared_data, tmp_path):
    """The bundled model (it ships an OOD reference) calibrated on pediatric normals: the
    expected OOD share is the share of those children the engine warns about."""
    from xraytriage.cli.common import default_model_path
    from xraytriage.cli.main import main
    from xraytriage.models.ood import OOD_WARNING
    from xraytriage.serving.drift import ood_threshold_of
    from xraytriage.triage import TriageEngine, TriageOptions

    files = sorted((shared_data / "pediatric" / "NORMAL").glob("*.jpg"))[:24]
    if len(files) < 24:
        pytest.skip("too few pediatric normals")
    site = _site(tmp_path, files, "children")
    out = tmp_path / "children.pt"
    argv = ["calibrate", "--model", str(default_model_path()), "--site-normals", str(site), "--workers", "0"]
    assert main([*argv, "--output", str(out)]) == 0
    calibrated = load_checkpoint(out)
    from xraytriage.models.inference import TorchPredictor

    engine = TriageEngine(TorchPredictor(calibrated), TriageOptions(workers=0, progress=False))
    results = list(engine.iter_results([str(f) for f in files]))
    warned = np.mean([any(OOD_WARNING in w for w in r.warnings) for r in results])
    assert calibrated.expected_rates["ood"] == pytest.approx(warned)
    assert warned > 0  # children are unlike the NIH adults
    assert ood_threshold_of(calibrated) == 1.0
