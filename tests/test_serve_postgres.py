"""The service on PostgreSQL (``--db postgresql://...``): the same intake, claims and results.

Two claims on two engines race at a barrier, the first held inside its transaction
(``FOR UPDATE SKIP LOCKED``: the second takes other images, without waiting); two worker threads
claim batches concurrently: every image is scored exactly once and the ranks equal those on SQLite.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import event

from postgres_support import postgres_server
from waiting import wait_until
from xraytriage.serving.config import ServeConfig
from xraytriage.serving.db import Database, Image, Study
from xraytriage.serving.records import ImageRecord
from xraytriage.serving.repository import Repository
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import StudyState

pytestmark = pytest.mark.slow  # a real PostgreSQL server (system test); make test-fast leaves it out

DONE = StudyState.DONE
RACE_TIMEOUT = 10.0
"""Seconds either side of the claim race waits for the other (a broken claim fails, not hangs)."""


def race_two_claims(url: str, limit: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Two repositories on two engines (two instances of the service) claim ``limit`` images at
    the same moment, the first caught inside its transaction.

    The first claim is paused right after its SELECT ran (its rows locked by ``FOR UPDATE``, not
    yet marked processing, nothing committed); at a barrier the second claim starts and runs to
    its end; then the first goes on. With ``SKIP LOCKED`` the second takes the next images; with
    a plain ``FOR UPDATE`` it would wait on the first's row locks (``lock_timeout`` turns that
    into an error here instead of a hang); without row locks both would take the same images.
    """
    databases = [Database(url, migrate=False) for _ in range(2)]
    for db in databases:
        event.listen(db.engine, "connect", _set_lock_timeout)
    armed, second_done = threading.Event(), threading.Event()
    barrier = threading.Barrier(2, timeout=RACE_TIMEOUT)

    def pause_after_select(conn, cursor, statement, parameters, context, executemany) -> None:
        if armed.is_set() and statement.lstrip().upper().startswith("SELECT") and "images" in statement:
            armed.clear()
            barrier.wait()  # the second claim starts now, while this transaction holds its rows
            second_done.wait(RACE_TIMEOUT)

    event.listen(databases[0].engine, "after_cursor_execute", pause_after_select)
    outcome: dict[str, object] = {}

    def second_claim() -> None:
        try:
            barrier.wait()
            outcome["claimed"] = Repository(databases[1]).claim_images(limit)
        except Exception as exc:  # reported by the test below, not lost in the thread
            outcome["error"] = exc
        finally:
            second_done.set()

    thread = threading.Thread(target=second_claim)
    thread.start()
    armed.set()
    first = Repository(databases[0]).claim_images(limit)
    thread.join(RACE_TIMEOUT)
    assert not thread.is_alive(), "the second claim never finished"
    assert "error" not in outcome, (
        f"the second claim failed while the first held its rows: {outcome['error']!r}"
    )
    assert second_done.is_set() and not armed.is_set(), "the first claim's SELECT was never paused"
    for db in databases:
        db.engine.dispose()
    return first, outcome["claimed"]  # type: ignore[return-value]


def _set_lock_timeout(dbapi_connection, _record) -> None:
    """A claim that waits on another's row lock fails after 2 s instead of hanging the test."""
    dbapi_connection.execute("SET lock_timeout = '2s'")
    dbapi_connection.commit()


def test_service_on_postgresql(tmp_path: Path, shared_data: Path) -> None:
    files = sorted((shared_data / "nih" / "images").glob("*.png"))[:12]
    with postgres_server(tmp_path / "pg") as url:
        service = TriageService(
            ServeConfig(data_dir=tmp_path / "data", db_url=url, workers=0, batch_size=3, heatmaps=False)
        )
        assert service.db.engine.dialect.name == "postgresql"
        for path in files:
            service.ingest(path.read_bytes(), path.name)
        assert service.ingest(files[0].read_bytes(), "again.png").duplicate

        first, second = race_two_claims(url, 3)
        assert len(first) == len(second) == 3
        assert not {i.id for i in first} & {i.id for i in second}  # no image handed out twice
        for batch in (first, second):
            service.workers.predict(batch)
        service.workers.threads = 2
        service.start()
        try:
            wait_until(lambda: not service.pending()["images"], 60, what="the two workers to empty the queue")
        finally:
            service.stop()
        with service.db.session() as s:
            studies = {st.name: st for st in s.query(Study)}
            images = s.query(Image).all()
        assert len(studies) == len(files) and all(st.state == DONE for st in studies.values())
        assert all(image.attempts == 1 for image in images)  # each scored once

        # the worklist's window functions and filters give the same answer as on SQLite
        import psycopg
        from sqlalchemy.engine import make_url

        from test_serve_core import fill_worklist, reference_worklist
        from xraytriage.serving.db import Database

        address = make_url(url)
        with psycopg.connect(
            host=address.host, port=address.port, user=address.username, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE worklist")
        other = Database(url.rsplit("/", 1)[0] + "/worklist")
        fill_worklist(other)
        for read_status, finding in [(None, None), ("read", "Mass")]:
            got = [(st.id, r, n) for st, r, n in Repository(other).worklist(read_status, finding).rows]
            assert got == reference_worklist(other, read_status, finding)

    reference = TriageService(ServeConfig(data_dir=tmp_path / "sqlite", workers=0, heatmaps=False))
    for path in files:
        reference.ingest(path.read_bytes(), path.name)
    while reference.workers.step():
        pass
    with reference.db.session() as s:
        expected = {st.name: st.priority for st in s.query(Study)}
    assert {n: st.priority for n, st in studies.items()} == pytest.approx(expected, abs=1e-9)


def test_study_states_under_concurrency_on_postgresql(tmp_path: Path, shared_data: Path) -> None:
    """The races of test_serve_concurrency.py on PostgreSQL (READ COMMITTED, row locks)."""
    import psycopg
    from sqlalchemy.engine import make_url

    from test_serve_concurrency import (
        check_concurrent_uploads_of_one_study,
        check_heatmaps_drawn_at_once,
        check_new_image_reopens_a_read_study,
        check_two_workers_settle_one_study,
        make_service,
    )

    with postgres_server(tmp_path / "pg") as url:
        address = make_url(url)

        def fresh_service(name: str, create: bool = True):
            """A service on a database of its own (each check starts from an empty queue);
            ``create=False``: a second instance on the same database."""
            with psycopg.connect(
                host=address.host,
                port=address.port,
                user=address.username,
                dbname="postgres",
                autocommit=True,
            ) as conn:
                if create:
                    conn.execute(f"CREATE DATABASE {name}")
            service = make_service(tmp_path / name, url.rsplit("/", 1)[0] + "/" + name, batch_size=1)
            assert service.db.engine.dialect.name == "postgresql"
            return service

        check_concurrent_uploads_of_one_study(fresh_service("uploads"), shared_data, tmp_path)
        check_two_workers_settle_one_study(fresh_service("settle"), shared_data, tmp_path)
        check_new_image_reopens_a_read_study(fresh_service("reopen"), shared_data, tmp_path)
        check_heatmaps_drawn_at_once(fresh_service("heatmaps"), fresh_service("heatmaps", create=False))
