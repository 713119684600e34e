"""The service core without HTTP: storage, intake checks, the worker, recovery after a crash.

The HTTP API and the pages are tested against a real server in test_serve_api.py and
test_serve_browser.py.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from xraytriage.errors import UploadRejected
from xraytriage.serving.config import ServeConfig
from xraytriage.serving.db import Heatmap, Image, Study
from xraytriage.serving.intake import inspect_upload
from xraytriage.serving.records import Finding, findings_text
from xraytriage.serving.repository import Repository
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import StudyState
from xraytriage.serving.storage import BlobStore, safe_filename
from xraytriage.triage.reasons import tier_rank

QUEUED, PROCESSING, DONE, ERROR = StudyState  # images have the same four states

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "xraytriage" / "assets" / "samples"


def nih_pngs(n: int) -> list[Path]:
    return sorted(SAMPLES.glob("*.png"))[:n]


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def ct_dicom(shared_data: Path, tmp_path: Path) -> bytes:
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    ds.Modality = "CT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    return path.read_bytes()


def broken_pixels_dicom(shared_data: Path, tmp_path: Path) -> bytes:
    """Header intact (passes intake), JPEG stream garbage (fails in the worker)."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8])
    ds.StudyInstanceUID = "1.2.3.4.5.6.7.8.9"
    ds.SOPInstanceUID = "1.2.3.4.5.6.7.8.9.1"
    path = tmp_path / "broken.dcm"
    ds.save_as(path)
    return path.read_bytes()


@pytest.fixture()
def service(tmp_path: Path) -> TriageService:
    """The bundled default model (ONNX beside it), no background threads: tests step the worker."""
    return TriageService(
        ServeConfig(data_dir=tmp_path / "data", workers=0, heatmaps=True, heatmap_findings=2)
    )


def drain(service: TriageService) -> None:
    for _ in range(100):
        if not service.workers.step():
            return
    raise AssertionError("the worker never ran out of work")


# --- storage and intake ------------------------------------------------------------------


def test_blob_store_is_content_addressed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, created = store.put(b"abc")
    again, created_again = store.put(b"abc")
    assert digest == again and created and not created_again
    assert store.path(digest).read_bytes() == b"abc"
    with pytest.raises(ValueError):
        store.path("../../etc/passwd")


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\chest 1.png", "chest 1.png"),
        ("", "upload"),
        ("..", "upload"),
    ],
)
def test_safe_filename_never_keeps_a_path(given: str, shown: str) -> None:
    assert safe_filename(given) == shown


def test_intake_checks_content_not_names(shared_data: Path, tmp_path: Path) -> None:
    png = nih_pngs(1)[0].read_bytes()
    info = inspect_upload(png, "x.dcm")  # a PNG named .dcm is still a PNG
    assert (info.format, info.width, info.height) == ("png", 256, 256)
    dicom = inspect_upload((shared_data / "dicom" / "siim_cr_chest_pa.dcm").read_bytes(), "a.png")
    assert dicom.format == "dicom" and dicom.modality == "CR" and dicom.study_uid

    cases = [
        (b"", 422, "empty"),
        (b"hello world, not an image at all" * 10, 415, "not a PNG, JPEG, TIFF or DICOM"),
        (png[: len(png) // 2], 422, "cannot read the png file"),
        (ct_dicom(shared_data, tmp_path), 422, "modality CT"),
        (png, 413, "over the limit"),
    ]
    for data, status, words in cases:
        with pytest.raises(UploadRejected) as caught:
            inspect_upload(data, "bad.png", max_bytes=len(png) - 1 if status == 413 else None)
        assert caught.value.status == status, words
        assert words in str(caught.value) and str(caught.value).startswith("bad.png: ")


# --- the worker ----------------------------------------------------------------------------


def test_service_matches_the_triage_command(service: TriageService, tmp_path: Path) -> None:
    """The service ranks studies exactly as ``xraytriage triage`` does on the same files."""
    from xraytriage.triage import TriageEngine, TriageOptions

    files = nih_pngs(5)
    for path in files:
        service.ingest(path.read_bytes(), path.name)
    drain(service)
    with service.db.session() as s:
        studies = {st.name: st for st in s.query(Study)}
    assert {st.state for st in studies.values()} == {DONE}

    cli = TriageEngine(service.predictor, TriageOptions(workers=0, progress=False)).run(files)
    assert [Path(r.path).name for r in cli.rows] == sorted(studies, key=lambda n: -studies[n].priority)
    for row in cli.rows:
        study = studies[Path(row.path).name]
        assert study.priority == pytest.approx(row.priority, abs=1e-6)
        assert findings_text(study.findings) == row.findings


def test_same_file_twice_is_one_study(service: TriageService) -> None:
    data = nih_pngs(1)[0].read_bytes()
    first = service.ingest(data, "a.png")
    second = service.ingest(data, "renamed.png")
    assert second.duplicate and not first.duplicate
    assert (first.study_id, first.image_id) == (second.study_id, second.image_id)
    with service.db.session() as s:
        assert s.query(Study).count() == 1 and s.query(Image).count() == 1


def test_dicom_images_group_by_study_uid(service: TriageService, shared_data: Path) -> None:
    a = service.ingest((shared_data / "dicom" / "siim_cr_chest_pa.dcm").read_bytes(), "1.dcm")
    other = pydicom.dcmread(shared_data / "dicom" / "cr_chest_pa_monochrome1.dcm")
    other.SOPInstanceUID = pydicom.uid.generate_uid()  # another instance (the file shares a's UID)
    buffer = io.BytesIO()
    other.save_as(buffer)
    b = service.ingest(buffer.getvalue(), "2.dcm")
    assert a.study_id == b.study_id and a.image_id != b.image_id
    drain(service)
    with service.db.session() as s:
        study = s.get(Study, a.study_id)
        assert study.state == DONE and len(study.images) == 2
        assert study.abnormal == pytest.approx(max(img.abnormal for img in study.images))


def test_client_study_key_groups_uploads(service: TriageService) -> None:
    files = nih_pngs(2)
    ids = {service.ingest(p.read_bytes(), p.name, study_key="visit-7").study_id for p in files}
    assert len(ids) == 1
    drain(service)
    with service.db.session() as s:
        study = s.get(Study, ids.pop())
        assert len(study.images) == 2
        assert study.abnormal == pytest.approx(max(i.abnormal for i in study.images))  # max aggregation


def test_unreadable_pixels_become_an_error_naming_the_file(
    service: TriageService, shared_data: Path, tmp_path: Path
) -> None:
    accepted = service.ingest(broken_pixels_dicom(shared_data, tmp_path), "broken chest.dcm")
    good = service.ingest(nih_pngs(1)[0].read_bytes(), "good.png")
    drain(service)
    with service.db.session() as s:
        bad = s.get(Study, accepted.study_id)
        assert bad.state == ERROR
        assert bad.error.startswith("broken chest.dcm: ") and "blobs" not in bad.error
        assert s.get(Study, good.study_id).state == DONE


def test_heatmaps_are_drawn_for_listed_findings(service: TriageService) -> None:
    accepted = service.ingest(nih_pngs(1)[0].read_bytes(), "a.png")
    drain(service)
    with service.db.session() as s:
        study = s.get(Study, accepted.study_id)
        listed = [f.name for f in study.findings]
        heatmaps = s.query(Heatmap).filter(Heatmap.image_id == study.key_image_id).all()
        assert study.heatmaps_state == "done" and study.explained_at >= study.predicted_at
    assert listed, "the sample should list at least one finding"
    assert [h.finding for h in sorted(heatmaps, key=lambda h: -h.probability)] == listed[:2]
    for heatmap in heatmaps:
        heat = np.asarray(PILImage.open(service.drawings.heat_path(accepted.image_id, heatmap.finding)))
        assert heat.shape == (256, 256) and heat.max() > heat.min()
        assert heatmap.box is not None and heatmap.box["w"] > 0


def test_recover_requeues_work_a_crash_left_behind(service: TriageService) -> None:
    accepted = service.ingest(nih_pngs(1)[0].read_bytes(), "a.png")
    claimed = service.repo.claim_images(10)
    assert [i.id for i in claimed] == [accepted.image_id]
    assert service.repo.claim_images(10) == []  # claimed work is not handed out twice
    # ... the process dies here; a new service on the same data folder picks it up
    again = TriageService(service.config)
    with again.db.session() as s:
        assert s.get(Image, accepted.image_id).state == PROCESSING
    assert again.repo.recover() == (1, 0)
    with again.db.session() as s:
        assert s.get(Image, accepted.image_id).state == QUEUED
    drain(again)
    with again.db.session() as s:
        assert s.get(Study, accepted.study_id).state == DONE


def test_an_image_in_flight_too_often_is_given_up_and_suspects_run_alone(service: TriageService) -> None:
    """Attempts are counted at the claim, before any work: after MAX_ATTEMPTS crashes with an
    image in flight, recovery marks it an error instead of queueing it again (no crash loop);
    an image that was in flight during a crash is retried alone."""
    from xraytriage.serving.jobs import MAX_ATTEMPTS

    poison, *others = [service.ingest(p.read_bytes(), p.name) for p in nih_pngs(3)]
    for crash in range(MAX_ATTEMPTS):
        claimed = service.repo.claim_images(10)
        expected = 3 if crash == 0 else 1  # suspects (in flight before) are claimed one at a time
        assert len(claimed) == expected and claimed[0].id == poison.image_id
        if crash == 0:  # the two others finish before the crash; only the poison stays in flight
            service.repo.requeue([a.image_id for a in others])
            with service.db.session() as s:
                for a in others:
                    s.get(Image, a.image_id).attempts = 0
        # ... the process dies here, mid-image; a restart recovers
        assert service.repo.recover(MAX_ATTEMPTS) == ((1, 0) if crash < MAX_ATTEMPTS - 1 else (0, 1))
    with service.db.session() as s:
        image = s.get(Image, poison.image_id)
        assert image.state == ERROR and image.attempts == MAX_ATTEMPTS
        assert f"gave up after {MAX_ATTEMPTS} attempts" in image.error and image.filename in image.error
    for study_id in service.repo.unsettled_study_ids():  # what start() does after recover()
        service.jobs.settle(study_id)
    drain(service)
    with service.db.session() as s:
        assert s.get(Study, poison.study_id).state == ERROR
        assert all(s.get(Study, a.study_id).state == DONE for a in others)


def test_concurrent_heatmap_requests_share_one_job(service: TriageService) -> None:
    accepted = service.ingest(nih_pngs(1)[0].read_bytes(), "a.png")
    drain(service)
    with service.db.session() as s:
        service.db.engine.dispose()
        assert s.get(Study, accepted.study_id).state == DONE
    drawings = service.drawings
    started = drawings.jobs.started
    item = drawings.picture_item("Effusion", "overlay")
    futures = [f for _ in range(8) for f in drawings.futures(accepted.image_id, [item])]
    for future in futures:
        future.result(120)
    assert drawings.jobs.started == started + 1
    assert len({id(f) for f in futures}) == 1
    assert drawings.picture_path(accepted.image_id, "Effusion", "overlay").is_file()
    assert drawings.futures(accepted.image_id, [item]) == []  # drawn: nothing to wait for


def test_start_removes_temporary_files_and_orphan_blobs(service: TriageService) -> None:
    """What a kill or a full disk left behind: temporary upload files, halves of atomic
    writes and blobs whose database row was never committed."""
    kept = service.ingest(nih_pngs(1)[0].read_bytes(), "kept.png")
    orphan, _ = service.store.put(b"\x89PNG\r\n\x1a\n never committed")
    old = time.time() - 3600
    os.utime(service.store.path(orphan), (old, old))
    young, _ = service.store.put(b"\x89PNG\r\n\x1a\n still being uploaded")
    temp = service.store.temp_file()
    half = service.store.path(kept.image_id).parent / ".tmp-abc"
    half.write_bytes(b"x")
    service.start()
    service.stop()
    assert not temp.exists() and not half.exists()
    assert not service.store.exists(orphan)
    assert service.store.exists(young)  # within the grace period: maybe an upload in flight
    assert service.store.exists(kept.image_id)


def test_a_full_disk_while_recording_is_a_507_that_leaves_nothing(service: TriageService) -> None:
    """The database cannot commit (SQLite: 'database or disk is full'): the upload is refused
    with 507 naming the file, the blob just written is removed, health turns degraded."""
    from sqlalchemy.exc import OperationalError

    def full(*_args, **_kwargs):
        raise OperationalError("INSERT", {}, Exception("database or disk is full"))

    service.repo.record_image = full  # type: ignore[method-assign]
    data = nih_pngs(1)[0].read_bytes()
    with pytest.raises(UploadRejected) as refused:
        service.ingest(data, "late.png")
    assert refused.value.status == 507 and "storage is full" in refused.value.problem
    assert refused.value.filename == "late.png"
    assert not any(p.is_file() for p in service.store.blobs.rglob("*"))
    assert service.storage.status()["ok"] is False


def test_a_crash_between_scoring_and_aggregating_is_repaired(service: TriageService) -> None:
    accepted = service.ingest(nih_pngs(1)[0].read_bytes(), "a.png")
    # score the image but die before the study is aggregated
    service.jobs.settle = lambda study_id: None  # type: ignore[method-assign]
    assert service.workers.step()
    with service.db.session() as s:
        assert s.get(Image, accepted.image_id).state == DONE
        assert s.get(Study, accepted.study_id).state == QUEUED
    again = TriageService(service.config)
    again.start()
    try:
        with again.db.session() as s:
            study = s.get(Study, accepted.study_id)
            assert study.state == DONE and study.priority is not None
    finally:
        again.stop()


def test_display_image_follows_the_dicom_pixel_chain(service: TriageService, shared_data: Path) -> None:
    """Same stored pixels, one labelled MONOCHROME1: it must be shown inverted (what a PACS shows)."""
    from xraytriage.io import read_radiograph

    a = service.ingest((shared_data / "dicom" / "siim_cr_chest_pa.dcm").read_bytes(), "1.dcm")
    first = np.asarray(PILImage.open(service.drawings.display_path(a.image_id)), dtype=np.float32)
    # the same SOP instance: b replaces a (whose blob and pictures then go), so a is drawn first
    b = service.ingest((shared_data / "dicom" / "cr_chest_pa_monochrome1.dcm").read_bytes(), "2.dcm")
    assert b.study_id == a.study_id and not service.store.exists(a.image_id)
    second = np.asarray(PILImage.open(service.drawings.display_path(b.image_id)), dtype=np.float32)
    assert first.shape == (1024, 1024)
    assert np.abs(first + second - 255.0).mean() < 1.0
    expected = read_radiograph(shared_data / "dicom" / "siim_cr_chest_pa.dcm").pixels * 255.0
    assert np.abs(first - expected).mean() < 1.0


def test_data_folder_survives_a_new_service(service: TriageService, tmp_path: Path) -> None:
    accepted = service.ingest(nih_pngs(1)[0].read_bytes(), "a.png")
    drain(service)
    copy = tmp_path / "copied"
    shutil.copytree(service.config.data_dir, copy)
    restarted = TriageService(ServeConfig(data_dir=copy, workers=0))
    with restarted.db.session() as s:
        study = s.get(Study, accepted.study_id)
        assert study.state == DONE and study.priority is not None


def fill_worklist(db, n: int = 60, seed: int = 0) -> None:
    """Studies in every state, with ties in priority and in time, and findings to filter on."""
    import random

    rng = random.Random(seed)
    names = ["Effusion", "Mass", "Pleural Thickening", "Nodule"]
    with db.session() as s:
        for i in range(n):
            state = rng.choice([DONE, DONE, DONE, QUEUED, PROCESSING, ERROR])
            listed = rng.sample(names, rng.randint(0, 2)) if state == DONE else []
            s.add(
                Study(
                    id=f"s{i:03d}",
                    name=f"study {i}",
                    state=state,
                    read_status=rng.choice(["new", "reading", "read"]),
                    priority=rng.choice([0.5, 0.25, rng.random()]) if state != QUEUED else None,
                    site_priority=rng.choice([None, None, 0.0, 0.5, 1.0]),
                    findings=[Finding(f, rng.randint(10, 99) / 100) for f in listed],
                    received_at=1000.0 + rng.choice([0, 1, 2, i]),
                    tier=rng.choice(["routine", "flagged", "critical", None]) if state == DONE else None,
                )
            )
            for k in range(rng.randint(0, 2)):
                s.add(Image(id=f"{i:032d}{k:032d}", study_id=f"s{i:03d}", filename="x.png", state=state))


def reference_worklist(db, read_status=None, finding=None) -> list[tuple[str, int | None, int]]:
    """The worklist order spelled out in Python: triaged, critical and STAT first, by priority (then the
    higher site priority, the oldest, the id), then waiting (oldest first), then unreadable;
    ranks over the whole list."""
    with db.session() as s:
        studies = s.query(Study).all()
        counts = {st.id: len(st.images) for st in studies}

    def key(st):
        group = 0 if st.state == DONE else 2 if st.state == ERROR else 1
        priority = (
            (
                -tier_rank(st.tier, st.site_priority),
                -(st.priority or 0.0),
                -(st.site_priority if st.site_priority is not None else -1.0),
            )
            if group == 0
            else (0, 0.0, 0.0)
        )
        return (group, *priority, st.received_at, st.id)

    rows, rank = [], 0
    for st in sorted(studies, key=key):
        rank += st.state == DONE
        listed = [f.name for f in st.findings]
        if (read_status is None or st.read_status == read_status) and (finding is None or finding in listed):
            rows.append((st.id, rank if st.state == DONE else None, counts[st.id]))
    return rows


def test_worklist_order_ranks_and_filters_in_sql(tmp_path: Path) -> None:
    from xraytriage.serving.db import Database

    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    fill_worklist(db)
    repo = Repository(db)
    for read_status, finding in [(None, None), ("read", None), (None, "Mass"), ("new", "Pleural Thickening")]:
        expected = reference_worklist(db, read_status, finding)
        page = repo.worklist(read_status, finding)
        got = [(st.id, rank, images) for st, rank, images in page.rows]
        window = repo.worklist(read_status, finding, limit=5, offset=3)
        assert got == expected and page.total == len(expected)
        assert [(st.id, r, n) for st, r, n in window.rows] == expected[3:8]
    # a study's page counts its rank in SQL by the same order (ties in priority included)
    for study_id, rank, _ in reference_worklist(db):
        assert repo.study_view(study_id).rank == rank, study_id
