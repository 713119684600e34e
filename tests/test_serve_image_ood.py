"""Issue 22 wired end to end: each image's ood_score and warnings (age outside the model's
ages, unlike the training images) reach the service's study, its API and its CSV export."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from serve_support import drain_worker, service_client
from tool_support import skip_missing
from xraytriage.models.ood import OOD_WARNING


@pytest.fixture()
def service(tmp_path: Path):
    from xraytriage.serving.config import ServeConfig
    from xraytriage.serving.service import TriageService

    return TriageService(ServeConfig(data_dir=tmp_path / "data", workers=0, heatmaps=False))


def _first(folder: Path, pattern: str, count: int = 1) -> list[Path]:
    found = sorted(folder.glob(pattern))[:count]
    if len(found) < count:
        skip_missing(f"no {pattern} under {folder}")
    return found


def test_image_ood_scores_and_warnings_reach_study_api_and_csv(service, shared_data: Path):
    assert service.engine.checkpoint.ood_reference() is not None, "the bundled model ships an OOD reference"
    children = _first(shared_data / "pediatric" / "NORMAL", "*.jpg", 3)
    adults = _first(shared_data / "nih" / "images", "*.png", 2)
    uploads = {}
    for path in [*children, *adults]:
        uploads[path.name] = service.ingest(path.read_bytes(), path.name)
    drain_worker(service)
    with service_client(service) as client:
        items = {i["name"]: i for i in client.get("/api/v1/worklist").json()["items"]}
        rows = {r["name"]: r for r in csv.DictReader(io.StringIO(client.get("/api/v1/worklist.csv").text))}
        studies = {name: client.get(f"/api/v1/studies/{items[name]['id']}").json() for name in items}
    assert set(items) == set(uploads)
    warned = 0
    for name, study in studies.items():
        assert study["state"] == "done", study
        score = study["ood_score"]
        assert isinstance(score, float) and np.isfinite(score) and score > 0, (name, study)
        assert float(rows[name]["ood_score"]) == pytest.approx(score, abs=5e-3)
        images = service.repo.study_view(study["id"]).images
        assert score == pytest.approx(max(i.ood_score for i in images))
        text = " ".join(study["warnings"])
        assert (OOD_WARNING in text) == (score >= 1.0), (name, score, text)
        assert (OOD_WARNING in rows[name]["warnings"]) == (score >= 1.0)
        warned += score >= 1.0
    assert warned, {n: s["ood_score"] for n, s in studies.items()}  # a child's film crosses the line
    child = np.mean([studies[p.name]["ood_score"] for p in children])
    adult = np.mean([studies[p.name]["ood_score"] for p in adults])
    assert child > adult, (child, adult)  # the children are further from the NIH adults
    _, counts = service.drift.current()
    ood = [row for row in counts if row[0] == "ood"]
    assert ood == [("ood", "", warned, len(studies))]  # the drift monitor's OOD share is counted


def test_drift_ood_threshold_is_the_warning_line_in_score_units():
    """The reference's ``threshold`` is a distance (tens); scores are already divided by it."""
    from xraytriage.cli.common import default_model_path
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.ood import fit_reference, ood_warning
    from xraytriage.serving.drift import DriftMonitor, ood_threshold_of
    from xraytriage.serving.records import StudyOutcome

    rng = np.random.default_rng(0)
    train = rng.normal(size=(400, 8))
    reference = fit_reference(train)
    assert reference.threshold > 2.0  # a distance, not the score line

    model = SimpleNamespace(ood=reference.to_dict(), expected_rates={"ood": 0.01})

    line = ood_threshold_of(model)
    assert line == 1.0
    far = reference.scores(rng.normal(size=(100, 8)) * 3.0)
    near = reference.scores(rng.normal(size=(100, 8)))
    scores = np.concatenate([far, near])
    monitor = DriftMonitor(model.expected_rates, 0.5, ood_threshold=line, min_studies=50)
    outcomes = [StudyOutcome(0.1, (), "routine", float(s)) for s in scores]
    ood = next(c for c in monitor.check(outcomes)[0].checks if c.rate == "ood")
    warned = sum(ood_warning(float(s)) is not None for s in scores)
    assert ood.count == warned and warned >= 90 and ood.departed  # counted exactly as warned
    bundled = load_checkpoint(default_model_path())
    assert ood_threshold_of(bundled) == (1.0 if bundled.ood else None)

    assert ood_threshold_of(SimpleNamespace(ood=None, expected_rates={"ood_threshold": 1.5})) == 1.5


@pytest.mark.parametrize("age", ["005Y", "062Y"])
def test_a_dicom_outside_the_models_ages_gets_the_age_warning_in_the_service(
    service, shared_data: Path, tmp_path: Path, age: str
):
    import pydicom

    source = shared_data / "dicom" / "siim_cr_chest_pa.dcm"
    if not source.is_file():
        skip_missing(f"{source} not found")
    low, high = service.engine.checkpoint.scope["age_years"]
    dataset = pydicom.dcmread(source)
    dataset.PatientAge = age
    path = tmp_path / f"age-{age}.dcm"
    dataset.save_as(path)
    service.ingest(path.read_bytes(), path.name)
    drain_worker(service)
    with service_client(service) as client:
        (item,) = client.get("/api/v1/worklist").json()["items"]
        study = client.get(f"/api/v1/studies/{item['id']}").json()
        csv_text = client.get("/api/v1/worklist.csv").text
    assert study["state"] == "done", study
    text = " ".join(study["warnings"])
    outside = not low <= int(age[:3]) <= high
    assert ("outside the model's training ages" in text) == outside, text
    assert ("outside the model's training ages" in csv_text) == outside
    assert study["ood_score"] is not None
