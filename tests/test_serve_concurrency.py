"""Study states under concurrency: uploads of one study at the same moment, a heatmap drawn by a
request while the worker draws it, two workers settling one study, and a study already read
that gets a new image. The same checks run on PostgreSQL in test_serve_postgres.py.

Each race starts its threads together at a barrier and is repeated, so a "look, then insert"
(or "read, then write back") in the service fails here, as it did in the browser.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from xraytriage.serving.config import ServeConfig
from xraytriage.serving.db import Heatmap, Image, Study
from xraytriage.serving.record_json import study_detail, study_summary
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import StudyState

DONE = StudyState.DONE

ROUNDS = 3
THREADS = 4


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run each call in its own thread, all released at once; their results (or exceptions)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # collected: the test shows every failure
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def failures(results: list[Any]) -> list[str]:
    return [f"{type(r).__name__}: {r}" for r in results if isinstance(r, Exception)]


def study_images(shared_data: Path, folder: Path, n: int, tag: str, **changes) -> list[bytes]:
    """``n`` different DICOM files (images) of one new study, from the real SIIM chest CR."""
    source = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    study_uid = pydicom.uid.generate_uid()
    files = []
    for i in range(n):
        source.StudyInstanceUID = study_uid
        source.SOPInstanceUID = pydicom.uid.generate_uid()
        source.PatientID, source.AccessionNumber = "PAT-4711", "ACC-0815"
        source.PatientAge, source.PatientSex, source.StudyDate = "045Y", "F", "20240131"
        for key, value in changes.items():
            setattr(source, key, value)
        path = folder / f"{tag}-{i}.dcm"
        source.save_as(path)
        files.append(path.read_bytes())
    return files


def make_service(tmp_path: Path, db_url: str | None = None, **options) -> TriageService:
    options.setdefault("heatmaps", False)
    return TriageService(ServeConfig(data_dir=tmp_path / "data", db_url=db_url, workers=0, **options))


def drain(service: TriageService) -> None:
    for _ in range(200):
        if not service.workers.step():
            return
    raise AssertionError("the worker never ran out of work")


def check_concurrent_uploads_of_one_study(service: TriageService, shared_data: Path, folder: Path) -> None:
    for round_ in range(ROUNDS):
        files = study_images(shared_data, folder, THREADS, f"r{round_}")
        results = race([lambda data=data: service.ingest(data, "chest.dcm", "upload") for data in files])
        assert not failures(results), failures(results)
        assert len({r.study_id for r in results}) == 1 and not any(r.duplicate for r in results)
        with service.db.session() as s:
            study = s.get(Study, results[0].study_id)
            assert len(study.images) == THREADS and study.state == "queued"
        again = race(
            [lambda data=data: service.ingest(data, "again.dcm", "upload") for data in files[:1] * 3]
        )
        assert not failures(again) and all(r.duplicate for r in again)
    with service.db.session() as s:
        assert s.query(Study).count() == ROUNDS and s.query(Image).count() == ROUNDS * THREADS


def check_heatmaps_drawn_at_once(service: TriageService, second: TriageService) -> None:
    """Two service instances on one database and data folder (two ``serve`` processes) draw
    the same heatmap at the same moment: one row, no UNIQUE error. (Within one instance the
    heatmap job pool makes concurrent requests share one drawing job, so this is the race left.)"""
    sample = sorted((Path(__file__).resolve().parents[1] / "src/xraytriage/assets/samples").glob("*.png"))[0]
    image_id = service.ingest(sample.read_bytes(), sample.name).image_id
    drain(service)
    for instance in (service, second):
        _ = instance.drawings.explainer.feature_shape  # built once, before the race
    import xraytriage.explain as explain

    drawn = threading.Barrier(2)
    original = explain.explain_image

    def explain_then_meet(*args, **kwargs):  # both have drawn it: now both store it
        result = original(*args, **kwargs)
        drawn.wait(60)
        return result

    explain.explain_image = explain_then_meet
    try:
        findings = list(service.checkpoint.findings)[:ROUNDS]
        for finding in findings:
            results = race(
                [lambda f=finding, one=one: one.drawings.ensure(image_id, [f]) for one in (service, second)]
            )
            assert not failures(results), failures(results)
            assert {r[0].finding for r in results} == {finding}
    finally:
        explain.explain_image = original
    with service.db.session() as s:
        rows = s.query(Heatmap).filter(Heatmap.image_id == image_id).all()
        assert sorted(h.finding for h in rows) == sorted(findings)


def check_two_workers_settle_one_study(service: TriageService, shared_data: Path, folder: Path) -> None:
    """Each worker finished one image of the study: it must end ``done``, never ``processing``.

    The worker that sees the other image still processing is held (3 s at most) just before it
    writes ``processing``, while the other one finishes: a settle that read the images before
    taking the study's lock would then overwrite ``done`` with ``processing`` for good.
    """
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    PROCESSING = StudyState.PROCESSING

    other_settled = threading.Event()
    held = threading.Event()

    def hold_first_processing(session, _context, _instances) -> None:
        if any(isinstance(o, Study) and o.state == PROCESSING for o in session.dirty) and not held.is_set():
            held.set()
            other_settled.wait(3)

    settle = service.jobs.settle

    def settle_and_tell(study_id: str) -> None:
        settle(study_id)
        other_settled.set()

    service.jobs.settle = settle_and_tell  # type: ignore[method-assign]
    event.listen(Session, "before_flush", hold_first_processing)
    try:
        for round_ in range(ROUNDS):
            held.clear()
            other_settled.clear()
            files = study_images(shared_data, folder, 2, f"s{round_}")
            (study_id,) = {service.ingest(data, "chest.dcm").study_id for data in files}
            first, second = service.repo.claim_images(1), service.repo.claim_images(1)
            assert len(first) == len(second) == 1
            results = race([lambda batch=batch: service.workers.predict(batch) for batch in (first, second)])
            assert not failures(results), failures(results)
            with service.db.session() as s:
                study = s.get(Study, study_id)
                assert (study.state, len(study.images)) == (DONE, 2), f"round {round_}: {study.state}"
                assert study.priority is not None
    finally:
        event.remove(Session, "before_flush", hold_first_processing)
        service.jobs.settle = settle  # type: ignore[method-assign]


def check_new_image_reopens_a_read_study(service: TriageService, shared_data: Path, folder: Path) -> None:
    first, second = study_images(shared_data, folder, 2, "reopen")
    study_id = service.ingest(first, "first.dcm").study_id
    drain(service)
    assert service.set_read_status(study_id, "read")
    service.ingest(second, "second.dcm")
    summary = study_summary(service.repo.study(study_id))
    assert summary["read_status"] == "new" and summary["new_images_since_read"] is True
    drain(service)
    detail = study_detail(service.repo.study_view(study_id), service.checkpoint)
    assert detail["images"] == 2 and detail["state"] == DONE and detail["new_images_since_read"]
    assert service.set_read_status(study_id, "read")
    summary = study_summary(service.repo.study(study_id))
    assert summary["read_status"] == "read" and summary["new_images_since_read"] is False


def test_concurrent_uploads_of_one_study(tmp_path: Path, shared_data: Path) -> None:
    check_concurrent_uploads_of_one_study(make_service(tmp_path), shared_data, tmp_path)


def test_a_heatmap_drawn_by_two_at_once(tmp_path: Path) -> None:
    check_heatmaps_drawn_at_once(make_service(tmp_path), make_service(tmp_path))


@pytest.mark.slow
def test_two_workers_settle_one_study(tmp_path: Path, shared_data: Path) -> None:
    check_two_workers_settle_one_study(make_service(tmp_path, batch_size=1), shared_data, tmp_path)


def test_a_new_image_reopens_a_read_study(tmp_path: Path, shared_data: Path) -> None:
    check_new_image_reopens_a_read_study(make_service(tmp_path), shared_data, tmp_path)


def test_a_database_from_an_older_version_gets_the_new_columns(tmp_path: Path) -> None:
    """Columns added since (PACS fields, warnings, reopen time) are added on start."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE studies (id VARCHAR(32) PRIMARY KEY, name VARCHAR(200))")
        conn.execute("INSERT INTO studies (id, name) VALUES ('old', 'from before')")
    from xraytriage.serving.db import Database

    db = Database(f"sqlite:///{path}")
    with db.session() as s:
        study = s.get(Study, "old")
        assert (study.name, study.patient_id, study.new_images_at) == ("from before", "", None)


@pytest.mark.parametrize("hidden", [False, True])
def test_pacs_fields_in_the_study_json(tmp_path: Path, shared_data: Path, hidden: bool) -> None:
    service = make_service(tmp_path)
    data = study_images(shared_data, tmp_path, 1, "pacs", ViewPosition="AP")[0]
    study_id = service.ingest(data, "chest.dcm").study_id
    summary = study_summary(service.repo.study(study_id), hide_identifiers=hidden)
    expected = {"patient_id": "PAT-4711", "accession": "ACC-0815", "patient_age": "45 y", "patient_sex": "F"}
    for key, value in expected.items():
        assert summary[key] == (None if hidden else value)
    assert summary["study_date"] == (None if hidden else "2024-01-31")
    assert (summary["view"], summary["body_part"], summary["identifiers_hidden"]) == ("AP", "CHEST", hidden)
