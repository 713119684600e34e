"""Drift you can see (issue 22 item 5) and the flag's reason in the service (item 3): rolling
flag rates against what calibration expects, on /healthz, /metrics and the worklist page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_support import service_client
from xraytriage.serving.drift import (
    DEPARTURE,
    NO_EXPECTATION,
    OK,
    WARMING_UP,
    DriftMonitor,
    binomial_bounds,
)
from xraytriage.serving.records import StudyOutcome

EXPECTED = {
    "flagged": 0.30,
    "critical": 0.02,
    "findings": {"Mass": 0.10, "Pneumothorax": 0.04, "Effusion": 0.15},
}
FLAG_AT = 0.66
SAMPLES = Path(__file__).resolve().parents[1] / "src" / "xraytriage" / "assets" / "samples"


def outcomes(n: int, rates: dict, seed: int) -> list[StudyOutcome]:
    """``n`` studies whose flags occur at ``rates`` (same shape as ``EXPECTED``)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        flagged = rng.random() < rates["flagged"]
        abnormal = rng.uniform(FLAG_AT, 1.0) if flagged else rng.uniform(0.0, FLAG_AT - 0.01)
        listed = tuple(name for name, r in rates["findings"].items() if rng.random() < r)
        tier = "critical" if rng.random() < rates["critical"] else ("flagged" if flagged else "routine")
        out.append(StudyOutcome(float(abnormal), listed, tier, None))
    return out


def test_binomial_bounds_hold_the_central_interval():
    low, high = binomial_bounds(500, 0.3, 0.01)
    assert low < 150 < high
    assert 115 <= low <= 125 and 175 <= high <= 185  # 150 +- about 2.6 sd (sd 10.2)


def test_in_distribution_rates_rarely_raise_an_alarm():
    monitor = DriftMonitor(EXPECTED, FLAG_AT, window=500, min_studies=100)
    statuses = [monitor.check(outcomes(500, EXPECTED, seed))[0].status for seed in range(40)]
    assert statuses.count(OK) >= 38, statuses  # alpha 1% over all rates together


def test_a_site_that_flags_pneumothorax_on_a_third_of_studies_departs():
    monitor = DriftMonitor(EXPECTED, FLAG_AT, window=500, min_studies=100)
    shifted = {**EXPECTED, "flagged": 0.5, "findings": {**EXPECTED["findings"], "Pneumothorax": 0.29}}
    report, counts = monitor.check(outcomes(500, shifted, seed=1))
    assert report.status == DEPARTURE
    departed = {c.name for c in report.departures}
    assert {"flagged", "Pneumothorax"} <= departed and "Mass" not in departed
    pneumothorax = next(c for c in report.departures if c.name == "Pneumothorax")
    assert pneumothorax.observed > pneumothorax.high and pneumothorax.expected == 0.04
    assert "Pneumothorax listed" in report.banner() and "site calibration" in report.banner()
    assert ("finding", "Pneumothorax", pneumothorax.count, 500) in counts


def test_no_judgement_before_enough_studies_or_without_expected_rates():
    shifted = {**EXPECTED, "flagged": 0.9}
    monitor = DriftMonitor(EXPECTED, FLAG_AT, window=500, min_studies=100)
    assert monitor.check(outcomes(60, shifted, seed=2))[0].status == WARMING_UP
    bare = DriftMonitor(None, FLAG_AT, window=500, min_studies=100)
    report, counts = bare.check(outcomes(300, shifted, seed=2))
    assert report.status == NO_EXPECTATION and report.banner() is None
    assert counts[0][0] == "flagged" and counts[0][2] > 200  # still counted, for /metrics


def test_the_window_keeps_only_the_latest_studies():
    monitor = DriftMonitor(EXPECTED, FLAG_AT, window=200, min_studies=100)
    shifted = {**EXPECTED, "flagged": 0.8}
    latest_first = outcomes(200, EXPECTED, seed=3) + outcomes(800, shifted, seed=4)
    assert monitor.check(latest_first)[0].status == OK


def test_ood_share_is_counted_when_the_model_has_an_ood_threshold():
    monitor = DriftMonitor({**EXPECTED, "ood": 0.05}, FLAG_AT, ood_threshold=2.0, window=500, min_studies=100)
    base = outcomes(400, EXPECTED, seed=5)
    children = [
        StudyOutcome(o.abnormal, o.findings, o.tier, 3.0 if i % 2 else 0.5) for i, o in enumerate(base)
    ]
    report, _ = monitor.check(children)
    ood = next(c for c in report.checks if c.rate == "ood")
    assert ood.departed and ood.observed == pytest.approx(0.5)


# --- the service ----------------------------------------------------------------------------------


@pytest.fixture()
def service(tmp_path: Path):
    from xraytriage.serving.config import ServeConfig
    from xraytriage.serving.service import TriageService

    return TriageService(ServeConfig(data_dir=tmp_path / "data", workers=0, heatmaps=False))


def _store(service, studies: list[StudyOutcome]) -> None:
    from xraytriage.serving.db import Study
    from xraytriage.serving.records import Finding

    with service.db.session() as s:
        for i, o in enumerate(studies):
            s.add(
                Study(
                    id=f"d{i:05d}",
                    name=f"study {i}",
                    state="done",
                    priority=o.abnormal,
                    abnormal=o.abnormal,
                    findings=[Finding(name, 0.9) for name in o.findings],
                    tier=o.tier,
                    received_at=1000.0 + i,
                    predicted_at=1000.0 + len(studies) - i,  # the first is the latest
                )
            )


@pytest.mark.parametrize("shift", [False, True])
def test_service_shows_a_departure_on_healthz_metrics_and_the_worklist(service, shift):
    service.drift.monitor = DriftMonitor(EXPECTED, FLAG_AT, window=300, min_studies=100)
    rates = {**EXPECTED, "findings": {**EXPECTED["findings"], "Pneumothorax": 0.3}} if shift else EXPECTED
    _store(service, outcomes(300, rates, seed=7))
    with service_client(service) as client:
        health = client.get("/healthz").json()
        metrics = client.get("/metrics")
        page = client.get("/").text
    drift = health["drift"]
    assert drift["studies"] == 300 and drift["window"] == 300
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'xraytriage_expected_flag_rate{finding="Pneumothorax",rate="finding"} 0.04' in text
    assert "xraytriage_drift_studies 300.0" in text
    if shift:
        assert drift["status"] == "departure"
        assert [d["finding"] for d in drift["departures"]] == ["Pneumothorax"]
        assert "xraytriage_drift_departure 1.0" in text
        assert 'xraytriage_flag_rate_departure{finding="Pneumothorax",rate="finding"} 1.0' in text
        assert 'id="drift-banner"' in page and "Pneumothorax listed" in page
    else:
        assert drift["status"] == "ok" and drift["departures"] == []
        assert "xraytriage_drift_departure 0.0" in text
        assert 'id="drift-banner"' not in page


def test_triaged_studies_carry_tier_and_reason_through_db_api_and_csv(service):
    """Real sample radiographs through the worker: every flagged study has its reason in the
    database, the API and the CSV export, and the drift monitor counts them."""
    for path in sorted(SAMPLES.glob("*.png")):
        service.ingest(path.read_bytes(), path.name)
    for _ in range(100):
        if not service.workers.step():
            break
    with service_client(service) as client:
        items = client.get("/api/v1/worklist").json()["items"]
        csv_text = client.get("/api/v1/worklist.csv").text
    assert items and all(i["state"] == "done" for i in items)
    flagged = [i for i in items if i["flagged"] or i["tier"] == "critical"]
    assert flagged, "no sample study was flagged"
    for item in items:
        assert item["tier"] in ("critical", "flagged", "routine")
        assert bool(item["flag_reason"]) == (item in flagged)
    header = csv_text.splitlines()[0].split(",")
    assert header[-3:] == ["tier", "flag_reason", "ood_score"]
    assert all(item["flag_reason"].split(";")[0] in csv_text for item in flagged)
    report, counts = service.drift.current()
    assert report.studies == len(items)
    assert counts[0] == ("flagged", "", sum(bool(i["flagged"]) for i in items), len(items))
