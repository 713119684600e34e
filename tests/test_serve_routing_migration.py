"""Migration 0007_i_route: a database from before routing takes up ``body_part``, ``model``
and ``urgency`` (old rows: empty, NULL, ordered by priority as before); a routed study orders
by its urgency in the SQL worklist and in its rank; the way back drops the columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import inspect

from test_serve_migrations import legacy_database
from xraytriage.serving import migrations
from xraytriage.serving.db import Database
from xraytriage.serving.repository import Repository

NEW_STUDY_COLUMNS = {"body_part", "model", "urgency"}
NEW_IMAGE_COLUMNS = {"routed_body_part", "model"}


def columns(db: Database, table: str) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns(table)}


def test_0007_upgrades_an_old_database_and_orders_by_urgency(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        legacy_database(conn.execute)
    db = Database(f"sqlite:///{path}")  # every revision up to the head
    with db.engine.connect() as conn:
        assert migrations.current(conn) == "0007_i_route"
    assert columns(db, "studies") >= NEW_STUDY_COLUMNS and columns(db, "images") >= NEW_IMAGE_COLUMNS
    repo = Repository(db)
    old = repo.study("old")
    assert (old.body_part, old.model, old.urgency) == ("", "", None)
    (image,) = repo.study_view("old").images
    assert (image.routed_body_part, image.model) == ("", "")

    # a routed fracture study: priority 0.2 on its own scale, urgency 0.95 on the shared one
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE studies SET priority = 0.2, abnormal = 0.2, urgency = 0.95, model = 'fracture', "
            "body_part = 'HAND', tier = 'flagged' WHERE id = 'none'"
        )
    page = repo.worklist()
    assert [(s.id, rank) for s, rank, _ in page.rows] == [("none", 1), ("old", 2)]
    assert repo.study_view("none").rank == 1 and repo.study_view("old").rank == 2
    with sqlite3.connect(path) as conn:  # without its urgency it sorts by its priority again
        conn.execute("UPDATE studies SET urgency = NULL WHERE id = 'none'")
    assert [s.id for s, _, _ in repo.worklist().rows] == ["old", "none"]
    assert repo.study_view("none").rank == 2

    migrations.downgrade(db.engine, "0006_image_ood")
    assert not NEW_STUDY_COLUMNS & columns(db, "studies") and not NEW_IMAGE_COLUMNS & columns(db, "images")
    migrations.upgrade(db.engine)
    assert columns(db, "studies") >= NEW_STUDY_COLUMNS
