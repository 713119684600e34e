"""The service's database schema (SQLAlchemy 2) and engine: studies, images, heatmaps.

Only :mod:`xraytriage.serving.repository` uses the mapped classes; the schema itself is made
and changed by the Alembic migrations in ``serving/migrations`` (run at start, under a
database lock, by :class:`Database`), never by ``create_all``.

SQLite in the data folder by default (WAL mode, so pages read while the worker writes); any
SQLAlchemy URL works, PostgreSQL included. Times are UNIX seconds (float), so they sort and
subtract without time-zone surprises; the API turns them into ISO 8601. State columns hold
the values of the enums in :mod:`~xraytriage.serving.states` (what moves are allowed is
written down there); ``studies.findings`` holds JSON (``[{"name": ..., "probability": ...}]``).

Concurrency: requests and worker threads (and on PostgreSQL several processes) write at the
same time. Every "insert if absent" is one ``INSERT ... ON CONFLICT DO NOTHING`` (or an
upsert), never "look, then insert"; a transaction that reads a study and then writes it
takes the write lock first (``session(lock=True)``: ``BEGIN IMMEDIATE`` on SQLite, and
``lock_study`` = ``SELECT ... FOR UPDATE`` on PostgreSQL), so no update is lost.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from xraytriage.serving.records import Finding, findings_from_json, findings_to_json
from xraytriage.serving.states import HeatmapsState, ImageState, ReadStatus, ResultsState, StudyState


class StateType(TypeDecorator):
    """A state column: ``VARCHAR(16)`` in the database, a member of its enum in Python (a value
    outside the enum is refused on the way in)."""

    impl = String(16)
    cache_ok = True

    def __init__(self, kind: type[StrEnum]) -> None:
        super().__init__()
        self.kind = kind

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else self.kind(value).value

    def process_result_value(self, value: Any, dialect: Any) -> StrEnum | None:
        return None if value is None else self.kind(value)


class FindingsType(TypeDecorator):
    """A study's listed findings, kept as JSON text (see :func:`records.findings_to_json`)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        return findings_to_json(list(value or []))

    def process_result_value(self, value: Any, dialect: Any) -> list[Finding]:
        return findings_from_json(value)


class Base(DeclarativeBase):
    pass


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), default="upload")
    study_uid: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    calling_ae: Mapped[str | None] = mapped_column(String(32), nullable=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    received_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    last_image_at: Mapped[float] = mapped_column(Float, default=time.time)
    updated_at: Mapped[float] = mapped_column(Float, default=time.time)
    state: Mapped[StudyState] = mapped_column(StateType(StudyState), default=StudyState.QUEUED, index=True)
    read_status: Mapped[ReadStatus] = mapped_column(StateType(ReadStatus), default=ReadStatus.NEW, index=True)
    priority: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    abnormal: Mapped[float | None] = mapped_column(Float, nullable=True)
    findings: Mapped[list[Finding]] = mapped_column(FindingsType, default=lambda: [])
    probabilities_json: Mapped[str] = mapped_column(Text, default="{}")
    site_priority: Mapped[float | None] = mapped_column(Float, nullable=True)
    key_image_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    predicted_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    heatmaps_state: Mapped[HeatmapsState] = mapped_column(
        StateType(HeatmapsState), default=HeatmapsState.NONE, index=True
    )
    explained_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    dicom_results_state: Mapped[ResultsState] = mapped_column(
        StateType(ResultsState), default=ResultsState.NONE, index=True
    )
    dicom_results_info: Mapped[str] = mapped_column(Text, default="")
    new_images_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When an image arrived after the study was marked reading/read (cleared when read again)."""
    warnings: Mapped[str] = mapped_column(Text, default="")
    tier: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    flag_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    ood_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Caveats of its images the reader should see (low resolution), ``"; "``-separated."""
    # from the DICOM header, to match the worklist with the PACS (shown, never logged)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    accession: Mapped[str] = mapped_column(String(64), default="")
    patient_age: Mapped[str] = mapped_column(String(16), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(16), default="")
    views: Mapped[str] = mapped_column(String(64), default="")
    body_parts: Mapped[str] = mapped_column(String(64), default="")
    # body-part routing (migration 0007_i_route; docs/routing.md): empty/NULL when not routed
    body_part: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """The body part(s) the router gave the study's images (``CHEST``, ``HAND``...)."""
    model: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """The routed model that scored the study (``chest``, ``fracture``); empty: the one model."""
    urgency: Mapped[float | None] = mapped_column(Float, nullable=True)
    """``priority`` on the scale shared by every routed model; the worklist orders by
    ``coalesce(urgency, priority)`` (``triage.worklist.order_score``)."""

    images: Mapped[list[Image]] = relationship(back_populates="study", order_by="Image.received_at")

    @property
    def probabilities(self) -> dict[str, float]:
        return json.loads(self.probabilities_json or "{}")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        # one image per DICOM instance and study (migration 0004); NULL (not DICOM) is not constrained
        Index("uq_images_study_sop_instance", "study_id", "sop_instance_uid", unique=True),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 of the file's bytes: the blob's name."""
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    filename: Mapped[str] = mapped_column(String(200), default="")
    format: Mapped[str] = mapped_column(String(16), default="")
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[ImageState] = mapped_column(StateType(ImageState), default=ImageState.QUEUED, index=True)
    error: Mapped[str] = mapped_column(Text, default="")
    probabilities_json: Mapped[str] = mapped_column(Text, default="{}")
    abnormal: Mapped[float | None] = mapped_column(Float, nullable=True)
    site_priority: Mapped[float | None] = mapped_column(Float, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    view_position: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(32), default="")
    received_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    processed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    ood_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    """How unlike the training images (``models.ood``; migration 0006); NULL without a reference."""
    warnings_json: Mapped[str | None] = mapped_column("warnings", Text, nullable=True)
    """The engine's caveats for the image, a JSON list (migration 0006); NULL before it."""
    routed_body_part: Mapped[str] = mapped_column(String(32), default="", server_default="")
    """The body part the router decided (``body_part`` is the DICOM header's); migration 0007_i_route."""
    model: Mapped[str] = mapped_column(String(64), default="", server_default="")
    """The routed model that scored the image; empty when the service does not route."""

    study: Mapped[Study] = relationship(back_populates="images")

    @property
    def probabilities(self) -> dict[str, float]:
        return json.loads(self.probabilities_json or "{}")

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(str(w) for w in json.loads(self.warnings_json or "[]"))


class Heatmap(Base):
    __tablename__ = "heatmaps"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    finding: Mapped[str] = mapped_column(String(64), primary_key=True)
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    box_json: Mapped[str] = mapped_column(Text, default="null")
    created_at: Mapped[float] = mapped_column(Float, default=time.time)

    @property
    def box(self) -> dict[str, float] | None:
        return json.loads(self.box_json or "null")


class AuditEntry(Base):
    """One audited action (migration 0003): append-only, triggers refuse UPDATE and DELETE."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String(64), default="")
    address: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32), index=True)
    study_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    status: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, busy_ms: int = 30000) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")  # first: the journal-mode switch may wait
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


OUTAGE_WORDS = ("database is locked", "database table is locked", "unable to open database", "disk i/o error")


def is_database_outage(exc: BaseException) -> bool:
    """True for errors that mean "the database is away" rather than "this query is wrong"."""
    if isinstance(exc, DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if isinstance(exc.orig, sqlite3.Error):  # "no such table" is a bug, "locked" is an outage
        return any(word in str(exc).lower() for word in OUTAGE_WORDS)
    return isinstance(exc, OperationalError | InterfaceError)  # refused, terminated, shutting down


DATABASE_ERRORS = (DBAPIError, DisconnectionError, PoolTimeout)
"""What a database call raises: the API answers these itself (503 for an outage)."""


def outage_reason(exc: BaseException) -> str:
    """A short, safe description (the first line of the driver's message, no SQL)."""
    inner = getattr(exc, "orig", None) or exc
    first = (str(inner).strip().splitlines() or [""])[0][:200]
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


UPSERT_DIALECTS = {"sqlite": sqlite, "postgresql": postgresql}
"""Databases with ``INSERT ... ON CONFLICT``; others get try-and-catch in a savepoint."""


class Database:
    """Engine + sessions, the schema brought up to date on opening (``migrate``). ``claim_lock``
    serialises job claims inside one process (SQLite); PostgreSQL additionally gets
    ``FOR UPDATE SKIP LOCKED``."""

    def __init__(self, url: str, migrate: bool = True, timeout: float = 30.0) -> None:
        """``timeout``: seconds a call waits for a SQLite lock, or for a PostgreSQL connection
        (to be made, or from the pool) before it fails as an outage."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # pre-ping: a pooled connection the database dropped (a restart) is replaced, not used
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": timeout}
        elif url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": max(1, round(timeout))}
            kwargs["pool_timeout"] = timeout
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            busy_ms = int(timeout * 1000)
            event.listen(self.engine, "connect", lambda conn, record: _sqlite_pragmas(conn, record, busy_ms))
        if migrate:
            from xraytriage.serving.migrations import upgrade

            upgrade(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.claim_lock = threading.Lock()

    @contextmanager
    def session(self, lock: bool = False) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error.

        ``lock=True`` for a transaction that reads rows and writes back what it read: on SQLite
        it starts with ``BEGIN IMMEDIATE`` (it holds the write lock from its first read, so no
        other writer can change what it read); on PostgreSQL use :meth:`lock_study`.
        """
        with self._sessions() as session:
            try:
                if lock and self.is_sqlite:
                    session.connection().exec_driver_sql("BEGIN IMMEDIATE")
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def probe(self) -> None:
        """Raises when the database cannot take a write now: ``SELECT 1`` on PostgreSQL; on
        SQLite the write lock taken and dropped (readers pass a lock that stops writers)."""
        with self.engine.connect() as connection:
            if self.is_sqlite:
                connection.exec_driver_sql("BEGIN IMMEDIATE")  # rolled back on leaving
            else:
                connection.exec_driver_sql("SELECT 1")

    def insert_if_absent(self, session: Session, model: type[Base], values: dict[str, Any]) -> bool:
        """``INSERT ... ON CONFLICT DO NOTHING``: True when this call created the row, False when
        it was there already (or another transaction created it at the same moment)."""
        module = UPSERT_DIALECTS.get(self.engine.dialect.name)
        table = model.__table__
        if module is not None:
            statement = module.insert(table).values(**values).on_conflict_do_nothing()
            key = next(iter(table.primary_key.columns))
            # RETURNING, not rowcount: drivers differ in what rowcount says here
            return session.execute(statement.returning(key)).first() is not None
        try:  # other databases: try, and treat a unique-key conflict as "already there"
            with session.begin_nested():
                session.execute(insert(table).values(**values))
            return True
        except IntegrityError:
            return False

    def upsert(self, session: Session, model: type[Base], values: dict[str, Any]) -> None:
        """Insert the row, or update it when its primary key exists (one statement: two writers
        of the same row never collide)."""
        table = model.__table__
        keys = [c.name for c in table.primary_key.columns]
        module = UPSERT_DIALECTS.get(self.engine.dialect.name)
        if module is not None:
            statement = module.insert(table).values(**values)
            changes = {k: statement.excluded[k] for k in values if k not in keys}
            session.execute(statement.on_conflict_do_update(index_elements=keys, set_=changes))
            return
        if not self.insert_if_absent(session, model, values):
            where = [table.c[k] == values[k] for k in keys]
            session.execute(
                update(table).where(*where).values({k: v for k, v in values.items() if k not in keys})
            )

    def lock_study(self, session: Session, study_id: str) -> Study | None:
        """The study, fresh from the database and locked for this transaction (PostgreSQL
        ``FOR UPDATE``; on SQLite the ``session(lock=True)`` already holds the write lock)."""
        query = select(Study).where(Study.id == study_id).execution_options(populate_existing=True)
        if not self.is_sqlite:
            query = query.with_for_update()
        return session.scalars(query).first()
