"""Schema migrations (Alembic) and the seams of serving/: from an empty database, from the
schema the last version without migrations made (tests/serve_legacy_schema.sql), under the
migration lock when several instances start at once; states that only move as written down;
the repository alone touching the tables."""

from __future__ import annotations

import ast
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from xraytriage.errors import IllegalTransition
from xraytriage.serving import migrations
from xraytriage.serving.db import Base, Database, Image, Study
from xraytriage.serving.records import Finding
from xraytriage.serving.repository import Repository
from xraytriage.serving.states import (
    TRANSITIONS,
    ImageState,
    ResultsState,
    StudyState,
    check_move,
)

TESTS = Path(__file__).resolve().parent
SERVING = TESTS.parent / "src" / "xraytriage" / "serving"
LEGACY_SCHEMA = (TESTS / "serve_legacy_schema.sql").read_text(encoding="utf-8")
LEGACY_FINDINGS = "Effusion 0.81; Pleural Thickening 0.64"


def legacy_database(run_sql) -> None:
    """The pre-Alembic schema with one triaged study (old findings text), its image and heatmap."""
    sql = "\n".join(line for line in LEGACY_SCHEMA.splitlines() if not line.startswith("--"))
    for statement in (part.strip() for part in sql.split(";")):
        if statement:
            run_sql(statement)
    run_sql(
        "INSERT INTO studies (id, source, name, received_at, last_image_at, updated_at, state, read_status, "
        "priority, abnormal, findings, probabilities_json, error, heatmaps_state, dicom_results_state, "
        "dicom_results_info, warnings, patient_id, accession, patient_age, patient_sex, study_date, views, "
        "body_parts) VALUES ('old', 'upload', 'from before', 1.0, 1.0, 1.0, 'done', 'read', 0.9, 0.9, "
        f"'{LEGACY_FINDINGS}', '{{}}', '', 'done', 'none', '', '', '', '', '', '', '', '', '')"
    )
    run_sql(
        "INSERT INTO studies (id, source, name, received_at, last_image_at, updated_at, state, read_status, "
        "findings, probabilities_json, error, heatmaps_state, dicom_results_state, dicom_results_info, "
        "warnings, patient_id, accession, patient_age, patient_sex, study_date, views, body_parts) VALUES "
        "('none', 'upload', 'nothing listed', 2.0, 2.0, 2.0, 'done', 'new', '', '{}', '', 'none', 'none', "
        "'', '', '', '', '', '', '', '', '')"
    )
    run_sql(
        "INSERT INTO images (id, study_id, filename, format, size_bytes, state, error, probabilities_json, "
        "modality, view_position, body_part, received_at, attempts) VALUES "
        f"('{'a' * 64}', 'old', 'x.png', 'png', 3, 'done', '', '{{}}', '', '', '', 1.0, 1)"
    )


def schema_of(engine) -> dict[str, tuple[set[str], set[str]]]:
    inspector = inspect(engine)
    return {
        table: (
            {c["name"] for c in inspector.get_columns(table)},
            {ix["name"] for ix in inspector.get_indexes(table)},
        )
        for table in ("studies", "images", "heatmaps", "audit")
    }


def check_migrated(db: Database) -> None:
    """At the newest revision, with every column and index the models have."""
    with db.engine.connect() as conn:
        assert migrations.current(conn) == migrations.head() == "0007_i_route"
    schema = schema_of(db.engine)
    for table in Base.metadata.sorted_tables:
        columns, indexes = schema[table.name]
        assert {c.name for c in table.columns} <= columns, table.name
        assert {ix.name for ix in table.indexes} <= indexes, table.name


def check_legacy_data(db: Database) -> None:
    repo = Repository(db)
    old = repo.study("old")
    assert old.findings == [Finding("Effusion", 0.81), Finding("Pleural Thickening", 0.64)]
    assert old.findings_text == LEGACY_FINDINGS
    assert (old.state, old.read_status, old.priority) == ("done", "read", 0.9)
    assert repo.study("none").findings == []
    assert [s.id for s, _, _ in repo.worklist(finding="Pleural Thickening").rows] == ["old"]
    assert repo.worklist(finding="Effusion").total == 1 and repo.worklist(finding="Mass").total == 0
    assert repo.study_view("old").images[0].state == ImageState.DONE


def test_migrations_from_an_empty_database(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    check_migrated(db)
    again = Database(db.url)  # a second start: nothing to do
    check_migrated(again)


def test_migrations_take_up_the_schema_made_before_alembic(tmp_path: Path) -> None:
    path = tmp_path / "legacy.db"
    with sqlite3.connect(path) as conn:
        legacy_database(conn.execute)
    db = Database(f"sqlite:///{path}")
    check_migrated(db)
    check_legacy_data(db)
    assert schema_of(db.engine) == schema_of(Database(f"sqlite:///{tmp_path / 'new.db'}").engine)

    migrations.downgrade(db.engine, "0001_baseline")  # the way back writes the text again
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT findings FROM studies WHERE id = 'old'").fetchone() == (LEGACY_FINDINGS,)


def test_a_schema_older_still_gets_the_missing_columns(tmp_path: Path) -> None:
    """What ``add_missing_columns`` did at every start is now the first revision: an older
    images table without the PACS columns and attempts gets them (with their defaults)."""
    path = tmp_path / "older.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE studies (id VARCHAR(32) PRIMARY KEY, name VARCHAR(200), findings TEXT)")
        conn.execute(
            "CREATE TABLE images (id VARCHAR(64) PRIMARY KEY, study_id VARCHAR(32), state VARCHAR(16))"
        )
        conn.execute("INSERT INTO studies (id, name, findings) VALUES ('s', 'older', 'Mass 0.70')")
        conn.execute(f"INSERT INTO images (id, study_id, state) VALUES ('{'b' * 64}', 's', 'queued')")
    db = Database(f"sqlite:///{path}")
    check_migrated(db)
    study = Repository(db).study("s")
    assert (study.name, study.patient_id, study.warnings, study.findings) == (
        "older",
        "",
        "",
        [Finding("Mass", 0.7)],
    )
    (image,) = Repository(db).claim_images(5)
    assert (image.attempts, image.body_part, image.state) == (1, "", "processing")


def test_instances_opening_one_empty_sqlite_file_at_once(tmp_path: Path) -> None:
    """Several processes' start-ups at one moment: one migrates, the others wait on the lock."""
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / f'race{attempt}.db'}"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def open_it(url: str = url, barrier: threading.Barrier = barrier, errors: list = errors) -> None:
            barrier.wait()
            try:
                Database(url)
            except BaseException as exc:  # collected: the test shows each
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        check_migrated(Database(url))


@pytest.mark.slow
def test_migrations_on_postgresql_from_empty_and_from_the_old_schema(tmp_path: Path) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    from postgres_support import postgres_server

    with postgres_server(tmp_path / "pg") as url:
        address = make_url(url)
        with psycopg.connect(
            host=address.host, port=address.port, user=address.username, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE legacy")
        check_migrated(Database(url))
        legacy_url = url.rsplit("/", 1)[0] + "/legacy"
        engine = create_engine(legacy_url)
        with engine.begin() as conn:
            legacy_database(lambda sql: conn.execute(text(sql)))
        engine.dispose()
        db = Database(legacy_url)
        check_migrated(db)
        check_legacy_data(db)
        assert schema_of(db.engine) == schema_of(Database(url).engine)


@pytest.mark.slow
def test_two_serve_instances_started_at_once_on_one_empty_postgresql(
    tmp_path: Path, shared_data: Path
) -> None:
    """Issue 17: the second instance died with 'relation "studies" already exists'. Both are
    started while the test holds the migration lock, so both reach the migrations at the same
    moment; then both come up and share the work."""
    import httpx

    from postgres_support import postgres_server
    from serve_support import start_server, wait_for

    files = sorted((shared_data / "nih" / "images").glob("*.png"))[:16]
    with postgres_server(tmp_path / "pg") as url:
        engine = create_engine(url)
        servers: list = []
        problems: list[BaseException] = []

        def start() -> None:
            try:
                servers.append(
                    start_server(
                        tmp_path,
                        "--db",
                        url,
                        "--workers",
                        "2",
                        "--batch-size",
                        "1",
                        "--no-heatmaps",
                        data_dir=tmp_path / "data",
                        timeout=300,
                    )
                )
            except BaseException as exc:  # collected: the test shows each
                problems.append(exc)

        with engine.connect() as held:
            migrations.lock(held)
            threads = [threading.Thread(target=start) for _ in range(2)]
            for thread in threads:
                thread.start()

            def waiting() -> int:
                with engine.connect() as conn:
                    query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    return conn.execute(text(query)).scalar_one() == 2

            try:
                wait_for(waiting, timeout=240, what="both instances waiting for the migration lock")
            finally:
                held.rollback()  # let them go
            for thread in threads:
                thread.join(320)
        engine.dispose()
        try:
            assert not problems, problems
            assert len(servers) == 2
            for i, path in enumerate(files):  # each instance receives half of the uploads
                with httpx.Client(base_url=servers[i % 2].url, timeout=60) as http:
                    response = http.post("/api/v1/images", files={"files": (path.name, path.read_bytes())})
                    assert response.status_code == 202, response.text

            def all_triaged():
                items = httpx.get(servers[0].url + "/api/v1/worklist", timeout=30).json()["items"]
                return len(items) == len(files) and all(i["state"] == "done" for i in items) and items

            items = wait_for(all_triaged, timeout=240, what="every study triaged")
            assert len({i["id"] for i in items}) == len(files)
            # both instances' "scored" lines are written (a log line may trail the answer that shows its work)
            logs = wait_for(
                lambda: (
                    (texts := [server.log() for server in servers])
                    and all("scored" in t for t in texts)
                    and texts
                ),
                timeout=30,
                what="both instances to log scored batches",
            )
            for log in logs:
                assert "already exists" not in log and "Traceback" not in log, log[-3000:]
            assert all("scored" in log for log in logs), "both instances take work from the queue"
        finally:
            for server in servers:
                server.stop()


# --- states --------------------------------------------------------------------------------


def test_states_move_only_as_written_down(tmp_path: Path) -> None:
    assert check_move(ImageState, "queued", "processing") == ImageState.PROCESSING
    assert check_move(StudyState, "done", "done") == StudyState.DONE  # idempotent writes
    for kind, old, new in [
        (ImageState, "done", "processing"),
        (ImageState, "error", "queued"),
        (StudyState, "done", "processing"),
        (ResultsState, "none", "sent"),
    ]:
        with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
            check_move(kind, old, new)
    with pytest.raises(ValueError):
        check_move(StudyState, "queued", "finished")  # not a state at all
    for kind, moves in TRANSITIONS.items():
        assert set(moves) == set(kind), kind  # every state has its row

    repo = Repository(Database(f"sqlite:///{tmp_path / 'states.db'}"))
    with repo.db.session() as s:
        s.add(Study(id="s", name="x", state=StudyState.DONE))
        s.add(Image(id="c" * 64, study_id="s", filename="x.png", state=ImageState.DONE))
    with pytest.raises(IllegalTransition):
        repo.retry_or_fail(["c" * 64], "boom", 3)  # a finished image is never queued again
    assert repo.study_view("s").images[0].state == ImageState.DONE


# --- seams -----------------------------------------------------------------------------------


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def serving_modules() -> dict[str, set[str]]:
    return {
        path.relative_to(SERVING).as_posix(): imports_of(path)
        for path in sorted(SERVING.rglob("*.py"))
        if "migrations" not in path.parts
    }


def test_only_the_repository_touches_the_tables() -> None:
    models = {f"xraytriage.serving.db.{name}" for name in ("Base", "Study", "Image", "Heatmap")}
    for name, imported in serving_modules().items():
        if name in ("db.py", "repository.py"):
            continue
        assert not imported & models, name
        if name == "worklist_sql.py":  # the worklist order's expressions, on columns the repository hands in
            continue
        assert not any(i == "sqlalchemy" or i.startswith("sqlalchemy.") for i in imported), name


def test_serving_imports_no_cli_and_has_no_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for name, imported in serving_modules().items():
        assert not any(i.startswith("xraytriage.cli") for i in imported), name
        module = "xraytriage.serving." + name.removesuffix(".py").replace("/", ".")
        module = module.removesuffix(".__init__")
        graph[module] = {i for i in imported if i.startswith("xraytriage.serving.")}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    graph.pop("xraytriage.serving", None)  # the package's re-exports

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for dep in graph.get(start, ()):
            if dep == target or (dep not in seen and (seen.add(dep) or reaches(dep, target, seen))):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, cycles
    assert "xraytriage.serving.service" not in graph["xraytriage.serving.worker"]
