"""The service's database (SQLAlchemy 2): studies, images, heatmaps.

SQLite in the data folder by default (WAL mode, so pages read while the worker writes); any
SQLAlchemy URL works, PostgreSQL included. Times are UNIX seconds (float), so they sort and
subtract without time-zone surprises; the API turns them into ISO 8601.

States: an image is ``queued`` -> ``processing`` -> ``done`` | ``error``; a study is
``queued`` while any image waits, ``done`` when every image is settled (``error`` when none
could be read). ``read_status`` is the reader's: ``new`` -> ``reading`` -> ``read``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, String, Text, create_engine, event, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

QUEUED, PROCESSING, DONE, ERROR = "queued", "processing", "done", "error"
READ_STATUSES = ("new", "reading", "read")
HEATMAPS_NONE, HEATMAPS_PENDING, HEATMAPS_DONE = "none", "pending", "done"


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
    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    read_status: Mapped[str] = mapped_column(String(16), default="new", index=True)
    priority: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    abnormal: Mapped[float | None] = mapped_column(Float, nullable=True)
    findings: Mapped[str] = mapped_column(Text, default="")
    probabilities_json: Mapped[str] = mapped_column(Text, default="{}")
    site_priority: Mapped[float | None] = mapped_column(Float, nullable=True)
    key_image_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    predicted_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    heatmaps_state: Mapped[str] = mapped_column(String(16), default=HEATMAPS_NONE, index=True)
    explained_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    dicom_results_state: Mapped[str] = mapped_column(String(16), default="none", index=True)
    dicom_results_info: Mapped[str] = mapped_column(Text, default="")

    images: Mapped[list[Image]] = relationship(back_populates="study", order_by="Image.received_at")

    @property
    def probabilities(self) -> dict[str, float]:
        return json.loads(self.probabilities_json or "{}")


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 of the file's bytes: the blob's name."""
    study_id: Mapped[str] = mapped_column(ForeignKey("studies.id"), index=True)
    filename: Mapped[str] = mapped_column(String(200), default="")
    format: Mapped[str] = mapped_column(String(16), default="")
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    error: Mapped[str] = mapped_column(Text, default="")
    probabilities_json: Mapped[str] = mapped_column(Text, default="{}")
    abnormal: Mapped[float | None] = mapped_column(Float, nullable=True)
    site_priority: Mapped[float | None] = mapped_column(Float, nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    processed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="images")

    @property
    def probabilities(self) -> dict[str, float]:
        return json.loads(self.probabilities_json or "{}")


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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Database:
    """Engine + sessions. ``claim_lock`` serialises job claims inside one process (SQLite);
    PostgreSQL additionally gets ``FOR UPDATE SKIP LOCKED``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.claim_lock = threading.Lock()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def recover(self, max_attempts: int | None = None) -> tuple[int, int]:
        """After a crash or kill: work that was being processed goes back to the queue.

        An image's attempt is counted when it is claimed, before any work on it, so an image
        that was in flight ``max_attempts`` times (each time the process died on it) is not
        queued again but marked ``error``: no restart loop. Returns (re-queued, given up)."""
        given_up = 0
        with self.session() as s:
            if max_attempts is not None:
                poison = list(
                    s.scalars(select(Image).where(Image.state == PROCESSING, Image.attempts >= max_attempts))
                )
                for image in poison:
                    image.state = ERROR
                    image.error = (
                        f"{image.filename}: gave up after {image.attempts} attempts: the service stopped "
                        "(crashed or was killed) each time while working on this image"
                    )
                    image.processed_at = time.time()
                given_up = len(poison)
            images = s.execute(update(Image).where(Image.state == PROCESSING).values(state=QUEUED)).rowcount
            s.execute(update(Study).where(Study.state == PROCESSING).values(state=QUEUED))
            s.execute(
                update(Study)
                .where(Study.heatmaps_state == PROCESSING)
                .values(heatmaps_state=HEATMAPS_PENDING)
            )
        return int(images or 0), given_up

    def requeue(self, image_ids: list[str]) -> None:
        """Put images this process claimed back in the queue (their results could not be saved)."""
        with self.session() as s:
            s.execute(
                update(Image).where(Image.id.in_(image_ids), Image.state == PROCESSING).values(state=QUEUED)
            )

    def image_ids(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Image.id)))

    def unsettled_study_ids(self) -> list[str]:
        """Studies still marked waiting although none of their images is: a crash came between
        storing the images' results and aggregating the study."""
        with self.session() as s:
            waiting = select(Image.study_id).where(Image.state.in_((QUEUED, PROCESSING)))
            query = select(Study.id).where(Study.state.in_((QUEUED, PROCESSING)), Study.id.notin_(waiting))
            return list(s.scalars(query))

    def claim_images(self, limit: int) -> list[Image]:
        """Up to ``limit`` queued images, oldest first, marked ``processing`` for this caller,
        their attempt counted (and committed) before any work starts.

        An image that was claimed before and is queued again (a crash or kill came while it
        was in flight) is a suspect: it is claimed alone, so one image that kills the process
        cannot use up the attempts of the others in its batch."""
        with self.claim_lock, self.session() as s:
            query = select(Image).where(Image.state == QUEUED).order_by(Image.received_at).limit(limit)
            if not self.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            images = list(s.scalars(query))
            suspects = [image for image in images if image.attempts > 0]
            if suspects:
                images = suspects[:1]
            for image in images:
                image.state = PROCESSING
                image.attempts += 1
            return images

    def claim_heatmap_study(self) -> str | None:
        """One study whose heatmaps are still to be drawn (its predictions are done)."""
        with self.claim_lock, self.session() as s:
            query = (
                select(Study)
                .where(Study.heatmaps_state == HEATMAPS_PENDING, Study.state == DONE)
                .order_by(Study.predicted_at)
                .limit(1)
            )
            if not self.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            study = s.scalars(query).first()
            if study is None:
                return None
            study.heatmaps_state = PROCESSING
            return study.id

    def queue_depth(self) -> dict[str, int]:
        with self.session() as s:
            queued = s.query(Image).filter(Image.state.in_((QUEUED, PROCESSING))).count()
            heatmaps = s.query(Study).filter(Study.heatmaps_state.in_((HEATMAPS_PENDING, PROCESSING))).count()
        return {"images": queued, "heatmaps": heatmaps}
