"""What a hospital keeps and for how long (issue 25): the audit trail (append-only), retention
(``--retention-days``), backup and restore, and one image per DICOM instance.

The service core runs in-process (no worker threads; the test steps the worker), the API
parts against the real server.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sqlite3
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from serve_support import running_server, wait_for
from xraytriage.serving.config import ServeConfig
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import ReadStatus

DAY = 86400.0


def nih(shared_data: Path, n: int, skip: int = 0) -> list[Path]:
    files = sorted((shared_data / "nih" / "images").glob("*.png"))[skip : skip + n]
    assert len(files) == n, "the shared NIH sample has too few images"
    return files


def make_service(tmp_path: Path, **options) -> TriageService:
    options.setdefault("heatmaps", False)
    return TriageService(ServeConfig(data_dir=tmp_path / "data", workers=0, **options))


def drain(service: TriageService) -> None:
    for _ in range(100):
        if not service.workers.step():
            return
    raise AssertionError("the worker never ran out of work")


def blobs(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_audit_trail_is_append_only(tmp_path: Path, shared_data: Path) -> None:
    service = make_service(tmp_path)
    service.audit.record("view", actor="token", address="10.0.0.7", study_ids=["s1"], detail="page")
    service.audit.record(
        "view", actor="token", address="10.0.0.7", study_ids=["s1"], detail="page", once=True
    )
    service.audit.record(
        "view", actor="token", address="10.0.0.7", study_ids=["s1"], detail="page", once=True
    )
    assert service.audit.flush()
    total, rows = service.repo.audit_entries()
    assert total == 2 and rows[0].actor == "token" and rows[0].study_id == "s1"  # the repeat counted once
    connection = sqlite3.connect(tmp_path / "data" / "xraytriage.db")
    for statement in ("UPDATE audit SET actor = 'someone else'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute(statement)
    connection.close()
    assert service.repo.audit_entries()[0] == 2


def test_retention_removes_old_studies_but_keeps_audit_and_running_work(
    tmp_path: Path, shared_data: Path
) -> None:
    from xraytriage.serving.retention import Retention

    service = make_service(tmp_path)
    files = nih(shared_data, 3)
    old = [service.ingest(p.read_bytes(), p.name) for p in files[:2]]
    drain(service)
    service.audit.record("view", actor="token", study_ids=[old[0].study_id])
    service.set_read_status(old[0].study_id, ReadStatus.READ)
    later = time.time() + 10 * DAY
    waiting = service.ingest(files[2].read_bytes(), files[2].name)  # queued, never scored
    assert service.store.path(old[0].image_id).exists()
    retention = Retention(service.repo, service.store, service.audit, days=7)
    # nothing is 7 days old yet
    assert retention.run_once() == {"studies": 0, "images": 0}
    # ten days on: the two triaged studies go, the queued one stays (a job would pick it up)
    assert retention.run_once(now=later) == {"studies": 2, "images": 2}
    service.audit.flush()
    for accepted in old:
        assert service.repo.study(accepted.study_id) is None
        assert not service.store.path(accepted.image_id).exists()
        assert not (service.store.derived_root / accepted.image_id[:2] / accepted.image_id).exists()
    assert service.repo.study(waiting.study_id) is not None and service.store.path(waiting.image_id).exists()
    kept = service.repo.audit_entries(study_id=old[0].study_id)[1]
    assert {e.action for e in kept} == {"view", "delete"}  # who saw it, and when it went
    drain(service)  # the queued study is scored as usual
    assert service.repo.study(waiting.study_id).state == "done"


def sop_copy(shared_data: Path, tmp_path: Path, name: str, **changes) -> bytes:
    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    for key, value in changes.items():
        setattr(ds, key, value)
    path = tmp_path / name
    ds.save_as(path)
    return path.read_bytes()


def test_a_replaced_dicom_copy_loses_its_blob_and_the_database_keeps_one_per_instance(
    tmp_path: Path, shared_data: Path
) -> None:
    from sqlalchemy.exc import IntegrityError

    from xraytriage.serving.db import Image

    service = make_service(tmp_path)
    first = service.ingest(sop_copy(shared_data, tmp_path, "a.dcm"), "a.dcm")
    drain(service)
    second = service.ingest(sop_copy(shared_data, tmp_path, "b.dcm", InstitutionName="corrected"), "b.dcm")
    assert second.image_id != first.image_id and second.study_id == first.study_id
    assert not service.store.path(first.image_id).exists()  # the replaced copy's blob is gone
    assert not (service.store.derived_root / first.image_id[:2] / first.image_id).exists()
    assert service.store.path(second.image_id).exists()
    # the database itself refuses a second row for the same (study, SOP instance)
    with pytest.raises(IntegrityError), service.db.session() as s:
        row = s.get(Image, second.image_id)
        s.add(
            Image(id="f" * 64, study_id=row.study_id, sop_instance_uid=row.sop_instance_uid, received_at=1.0)
        )


def backup_and_restore(service_dir: Path, archive: Path, restored: Path) -> None:
    from xraytriage.cli.main import main

    assert main(["backup", "--data-dir", str(service_dir), "--output", str(archive)]) == 0
    assert main(["restore", "--input", str(archive), "--data-dir", str(restored)]) == 0


def table_rows(db_file: Path) -> dict[str, list[tuple]]:
    connection = sqlite3.connect(db_file)
    tables = [
        r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
    ]
    rows = {t: sorted(connection.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables}
    connection.close()
    return rows


@pytest.mark.slow
def test_backup_while_serving_and_restore_into_a_fresh_folder(tmp_path: Path, shared_data: Path) -> None:
    files = nih(shared_data, 3, skip=5)
    with running_server(tmp_path, "--workers", "1", "--heatmap-findings", "1") as server:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for path in files:
                assert (
                    http.post("/api/v1/images", files=[("files", (path.name, path.read_bytes()))]).status_code
                    == 202
                )
            items = wait_for(
                lambda: (
                    (i := http.get("/api/v1/worklist").json()["items"])
                    and len(i) == len(files)
                    and all(x["state"] == "done" and x["heatmaps_state"] in ("none", "done") for x in i)
                    and i
                ),
                180,
                what="triage",
            )
            http.patch(f"/api/v1/studies/{items[0]['id']}", json={"status": "read"})
            http.get("/api/v1/audit")  # the admin's read writes what waits, before the backup
            # a backup taken while the service runs (and keeps writing: audit entries, heatmaps)
            archive = tmp_path / "backup.tar"
            restored = tmp_path / "restored"
            backup_and_restore(server.data_dir, archive, restored)
        server.stop()
    # every row and blob as the service left them (after the snapshot it only appended audit entries)
    source_rows = table_rows(server.data_dir / "xraytriage.db")
    restored_rows = table_rows(restored / "xraytriage.db")
    assert set(restored_rows) == set(source_rows)
    for table, rows in restored_rows.items():
        if table == "audit":  # the source may have appended more since the snapshot
            assert set(rows) <= set(source_rows[table]) and rows
            continue
        assert rows == source_rows[table], table
    source_blobs, restored_blobs = blobs(server.data_dir / "blobs"), blobs(restored / "blobs")
    assert restored_blobs == source_blobs and len(restored_blobs) == len(files)
    # the restored folder serves the same worklist
    with (
        running_server(tmp_path / "again", data_dir=restored) as again,
        httpx.Client(base_url=again.url) as http,
    ):
        assert [i["id"] for i in http.get("/api/v1/worklist").json()["items"]] == [i["id"] for i in items]
        audit = http.get("/api/v1/audit.csv").text
    actions = {row["action"] for row in csv.DictReader(io.StringIO(audit))}
    assert {"upload", "mark", "view-worklist"} <= actions


def test_restore_refuses_a_folder_that_has_data(tmp_path: Path) -> None:
    from xraytriage.cli.main import main

    service = make_service(tmp_path)
    archive = tmp_path / "b.tar"
    assert main(["backup", "--data-dir", str(service.config.data_dir), "--output", str(archive)]) == 0
    assert main(["restore", "--input", str(archive), "--data-dir", str(service.config.data_dir)]) != 0
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar file")
    assert main(["restore", "--input", str(bad), "--data-dir", str(tmp_path / "fresh")]) != 0


@pytest.mark.slow
def test_copies_of_one_sop_instance_at_the_same_instant_leave_one_on_postgresql(
    tmp_path: Path, shared_data: Path
) -> None:
    """Issue 25: on PostgreSQL two copies committed at once could both survive; now the unique
    index makes the later one replace the earlier, and only the survivor's blob stays."""
    from postgres_support import postgres_server
    from test_serve_concurrency import failures, race
    from xraytriage.serving.db import Image

    with postgres_server(tmp_path / "pg") as url:
        service = TriageService(
            ServeConfig(data_dir=tmp_path / "data", db_url=url, workers=0, heatmaps=False)
        )
        for round_ in range(3):
            sop = pydicom.uid.generate_uid()
            copies = [
                sop_copy(
                    shared_data,
                    tmp_path,
                    f"r{round_}-{i}.dcm",
                    SOPInstanceUID=sop,
                    InstitutionName=f"copy {i}",
                )
                for i in range(4)
            ]
            results = race(
                [lambda data=data: service.ingest(data, "copy.dcm", "dicom", "MODALITY") for data in copies]
            )
            assert not failures(results), failures(results)
            with service.db.session() as s:
                rows = s.query(Image).filter(Image.sop_instance_uid == sop).all()
            assert len(rows) == 1, [r.id[:8] for r in rows]
            stored = [r.image_id for r in results if service.store.exists(r.image_id)]
            assert stored == [rows[0].id]
        service.audit.flush()
        received = service.repo.audit_entries(action="receive")[1]
        assert received and all(e.actor == "dicom:MODALITY" for e in received)
