"""The one module that reads and writes the service's database.

Every query and every write of a study, image or heatmap row is a method here, with the
transaction and locking it needs; what leaves is a record (:mod:`~xraytriage.serving.records`),
never a session or a mapped object. Every state a method writes goes through
:func:`~xraytriage.serving.states.check_move` (the life cycle is written down there), so
a move the life cycle does not have raises instead of being stored.

Who writes what:

- intake (:meth:`Repository.record_image`): new study and image rows, a study's PACS fields,
  queueing it again (``state``, ``dicom_results_state``, ``read_status``/``new_images_at``),
  and removing earlier copies of the same SOP instance;
- the reader (:meth:`Repository.set_read_status`): ``read_status``, ``new_images_at``;
- the worker's jobs: image claims and scores (``state``, ``attempts``, ``probabilities_json``...),
  a study's settlement (:meth:`Repository.settle`: state, priority, findings, key image,
  heatmaps state), heatmap rows and the heatmaps state;
- start-up (:meth:`Repository.recover`): work a crash left in flight back to the queue;
- the DICOM node (:meth:`Repository.record_results`): ``dicom_results_state``/``_info``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import case, delete, func, insert, select, type_coerce, update
from sqlalchemy.orm import Session
from sqlalchemy.types import Text

from xraytriage.errors import DuplicateImage, SopConflict
from xraytriage.serving.db import AuditEntry, Database, Heatmap, Image, Study
from xraytriage.serving.intake import UploadInfo
from xraytriage.serving.records import (
    AuditRecord,
    HeatmapRecord,
    ImageRecord,
    ImageScore,
    ResultsInputs,
    Settlement,
    StudyOutcome,
    StudyRecord,
    StudyView,
    WorklistPage,
)
from xraytriage.serving.states import (
    HeatmapsState,
    ImageState,
    ReadStatus,
    ResultsState,
    StudyState,
    check_move,
)
from xraytriage.serving.worklist_sql import ahead_of, order_by, queue_first
from xraytriage.triage.reasons import tier_rank
from xraytriage.triage.worklist import order_score

WAITING = (ImageState.QUEUED, ImageState.PROCESSING)
WAITING_STUDY = (StudyState.QUEUED, StudyState.PROCESSING)


@dataclass(frozen=True)
class Recorded:
    """What :meth:`Repository.record_image` did: the study the image is in; ``duplicate``: the
    same bytes were there already (theirs stands); ``replaced``: earlier copies removed."""

    study_id: str
    duplicate: bool
    replaced: list[str]


def _move(row: Any, column: str, kind: type, new: Any) -> None:
    """Set a state column after checking the move (the one place rows change state)."""
    setattr(row, column, check_move(kind, getattr(row, column, None), new))


def study_record(study: Study) -> StudyRecord:
    values = {f.name: getattr(study, f.name) for f in fields(StudyRecord) if f.name != "dicom_results_info"}
    values["findings"] = list(study.findings or [])
    values["probabilities"] = study.probabilities
    values["dicom_results_info"] = _json_dict(study.dicom_results_info)
    return StudyRecord(**values)


def image_record(image: Image) -> ImageRecord:
    values = {f.name: getattr(image, f.name) for f in fields(ImageRecord)}
    return ImageRecord(**values)


def heatmap_record(heatmap: Heatmap) -> HeatmapRecord:
    return HeatmapRecord(
        image_id=heatmap.image_id,
        finding=heatmap.finding,
        probability=heatmap.probability,
        threshold=heatmap.threshold,
        box=heatmap.box,
        created_at=heatmap.created_at,
    )


def _json_dict(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _add_term(terms: str, term: str) -> str:
    """``"PA"`` + ``"AP"`` -> ``"PA, AP"`` (each once), for a study's views and body parts."""
    items = [t for t in terms.split(", ") if t]
    if term and term not in items:
        items.append(term)
    return ", ".join(items)[:64]


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def finding_filter(name: str):
    """Studies whose findings list ``name`` (their JSON has ``{"name": "<name>", ...}``)."""
    pattern = "%" + _like_escape('{"name": ' + json.dumps(name) + ",") + "%"
    return type_coerce(Study.findings, Text).like(pattern, escape="\\")


def _order_columns(done_only: bool) -> dict[str, Any]:
    """The studies table's columns for the keys of ``triage.worklist_order`` (``done_only``:
    blank unless triaged, so the waiting and unreadable ones tie and go by arrival)."""

    def done(column):
        return case((Study.state == StudyState.DONE, column), else_=None) if done_only else column

    return {
        "queue_first": queue_first(done(Study.tier), done(Study.site_priority)),
        "priority": done(_order_score()),
        "site_priority": done(Study.site_priority),
        "received_at": Study.received_at,
        "study": Study.id,
    }


def _order_score():
    """:func:`~xraytriage.triage.worklist.order_score` in SQL: a routed study's urgency (its
    priority on the scale shared by every model), else its priority."""
    return func.coalesce(Study.urgency, Study.priority)


def _group():
    """Triaged studies first, then those still waiting, then the ones that could not be read."""
    return case((Study.state == StudyState.DONE, 0), (Study.state == StudyState.ERROR, 2), else_=1)


class AuditMixin:
    """The audit trail's rows: only added and read, never changed (the table's triggers refuse)."""

    db: Database

    def add_audit(self, entries: Iterable[dict[str, Any]]) -> None:
        """Append entries (``at, actor, address, action, study_id, status, detail``)."""
        rows = [dict(entry) for entry in entries]
        if rows:
            with self.db.session() as s:
                s.execute(insert(AuditEntry), rows)

    def audit_entries(
        self,
        study_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 1000,
        offset: int = 0,
    ) -> tuple[int, list[AuditRecord]]:
        """(how many match, one page of them, newest first)."""
        filters = []
        if study_id:
            filters.append(AuditEntry.study_id == study_id)
        if action:
            filters.append(AuditEntry.action == action)
        if actor:
            filters.append(AuditEntry.actor == actor)
        if since is not None:
            filters.append(AuditEntry.at >= since)
        if until is not None:
            filters.append(AuditEntry.at < until)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(AuditEntry).where(*filters)) or 0
            query = select(AuditEntry).where(*filters).order_by(AuditEntry.id.desc()).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            return int(total), [audit_record(e) for e in s.scalars(query)]


class RetentionMixin:
    """Removing studies past the retention period (their images, heatmaps; audit rows stay)."""

    db: Database

    def expired_studies(self, before: float, limit: int = 500) -> list[str]:
        """Studies nothing happened to since ``before`` and that no job is working on."""
        busy = select(Image.study_id).where(Image.state.in_(WAITING))
        query = (
            select(Study.id)
            .where(
                Study.received_at < before,
                Study.last_image_at < before,
                Study.updated_at < before,
                Study.state.notin_(WAITING_STUDY),
                Study.heatmaps_state.notin_((HeatmapsState.PENDING, HeatmapsState.PROCESSING)),
                Study.id.notin_(busy),
            )
            .order_by(Study.received_at)
            .limit(limit)
        )
        with self.db.session() as s:
            return list(s.scalars(query))

    def delete_studies(self, study_ids: Sequence[str], before: float) -> dict[str, list[str]]:
        """Delete each study (locked, checked again: still expired and idle) with its images
        and heatmap rows; {study id: its image ids} of those deleted (the caller removes
        their blobs and pictures)."""
        deleted: dict[str, list[str]] = {}
        for study_id in study_ids:
            with self.db.session(lock=True) as s:
                study = self.db.lock_study(s, study_id)
                if study is None:
                    continue
                last = max(study.received_at or 0, study.last_image_at or 0, study.updated_at or 0)
                images = list(s.scalars(select(Image).where(Image.study_id == study_id)))
                waiting = study.state in WAITING_STUDY or any(i.state in WAITING for i in images)
                drawing = study.heatmaps_state in (HeatmapsState.PENDING, HeatmapsState.PROCESSING)
                if last >= before or waiting or drawing:
                    continue  # an image arrived or a job started since it was chosen
                ids = [image.id for image in images]
                if ids:
                    s.execute(delete(Heatmap).where(Heatmap.image_id.in_(ids)))
                    s.execute(delete(Image).where(Image.study_id == study_id))
                s.execute(delete(Study).where(Study.id == study_id))
                deleted[study_id] = ids
        return deleted


class Repository(AuditMixin, RetentionMixin):
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- intake ----------------------------------------------------------------------------
    def record_image(
        self,
        digest: str,
        study_id: str,
        name: str,
        info: UploadInfo,
        size: int,
        source: str,
        calling_ae: str | None,
    ) -> Recorded:
        """The image and its study in the database. Safe from many threads (and processes) at
        once, for images of one study too: the study row is created with ``INSERT ... ON
        CONFLICT DO NOTHING`` and locked before it is updated, so concurrent uploads never fail
        on the study's key nor lose an update."""
        now = time.time()
        db = self.db
        for _ in range(5):
            try:
                with db.session(lock=True) as s:
                    existing = s.get(Image, digest)
                    if existing is not None:
                        raise DuplicateImage(existing.study_id)
                    db.insert_if_absent(s, Study, _new_study(study_id, info, name, source, calling_ae, now))
                    study = db.lock_study(s, study_id)  # uploads of one study wait for each other here
                    # earlier copies of this SOP instance go first: (study, SOP UID) is unique
                    replaced = _replace_earlier_copies(s, study_id, info.sop_instance_uid, keep=digest)
                    if not db.insert_if_absent(s, Image, _new_image(digest, study_id, info, name, size, now)):
                        holder = s.scalar(select(Image.study_id).where(Image.id == digest))
                        if holder is None:  # another copy of the instance committed meanwhile
                            raise SopConflict
                        raise DuplicateImage(holder)  # the same file at the same moment: theirs stands
                    _add_image_to_study(study, info, source, now)
            except DuplicateImage as duplicate:
                return Recorded(duplicate.study_id, True, [])
            except SopConflict:
                continue  # again, now seeing (and replacing) the copy that won
            return Recorded(study_id, False, replaced)
        raise RuntimeError(f"image {digest[:12]}: its SOP instance kept being replaced at the same moment")

    def set_read_status(self, study_id: str, status: str) -> bool:
        """The reader's status; False when there is no such study."""
        with self.db.session(lock=True) as s:
            study = self.db.lock_study(s, study_id)
            if study is None:
                return False
            _move(study, "read_status", ReadStatus, status)
            if status == ReadStatus.READ:  # whatever arrived is seen now
                study.new_images_at = None
            study.updated_at = time.time()
        return True

    def image_ids(self) -> set[str]:
        with self.db.session() as s:
            return set(s.scalars(select(Image.id)))

    # --- the worker's queue ----------------------------------------------------------------
    def claim_images(self, limit: int) -> list[ImageRecord]:
        """Up to ``limit`` queued images, oldest first, marked ``processing`` for this caller,
        their attempt counted (and committed) before any work starts.

        An image that was claimed before and is queued again (a crash or kill came while it
        was in flight) is a suspect: it is claimed alone, so one image that kills the process
        cannot use up the attempts of the others in its batch."""
        db = self.db
        with db.claim_lock, db.session() as s:
            query = (
                select(Image).where(Image.state == ImageState.QUEUED).order_by(Image.received_at).limit(limit)
            )
            if not db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            images = list(s.scalars(query))
            suspects = [image for image in images if image.attempts > 0]
            if suspects:
                images = suspects[:1]
            for image in images:
                _move(image, "state", ImageState, ImageState.PROCESSING)
                image.attempts += 1
            s.flush()
            return [image_record(image) for image in images]

    def claim_heatmap_study(self) -> str | None:
        """One study whose heatmaps are still to be drawn (its predictions are done)."""
        db = self.db
        with db.claim_lock, db.session() as s:
            query = (
                select(Study)
                .where(Study.heatmaps_state == HeatmapsState.PENDING, Study.state == StudyState.DONE)
                .order_by(Study.predicted_at)
                .limit(1)
            )
            if not db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            study = s.scalars(query).first()
            if study is None:
                return None
            _move(study, "heatmaps_state", HeatmapsState, HeatmapsState.PROCESSING)
            return study.id

    def save_scores(self, scores: Iterable[ImageScore]) -> None:
        """The worker's results for claimed images: probabilities (``done``) or the error."""
        now = time.time()
        with self.db.session() as s:
            for score in scores:
                image = s.get(Image, score.image_id)
                if image is None or image.state in (ImageState.DONE, ImageState.ERROR):
                    continue  # replaced by a later copy, or finished by another instance meanwhile
                image.processed_at = now
                image.routed_body_part, image.model = score.body_part[:32], score.model[:64]
                if score.probabilities is not None:
                    _move(image, "state", ImageState, ImageState.DONE)
                    image.error = ""
                    image.probabilities_json = json.dumps(score.probabilities)
                    image.abnormal = score.abnormal
                    image.site_priority = score.site_priority
                    image.ood_score = score.ood_score
                    image.warnings_json = json.dumps(list(score.warnings))
                else:
                    _move(image, "state", ImageState, ImageState.ERROR)
                    image.error = score.error or "unknown error"

    def retry_or_fail(self, image_ids: Sequence[str], message: str, max_attempts: int) -> None:
        """Claimed images whose batch failed: back to the queue, or ``error`` after ``max_attempts``."""
        with self.db.session() as s:
            for image_id in image_ids:
                image = s.get(Image, image_id)
                if image is None:
                    continue
                if image.attempts >= max_attempts:
                    _move(image, "state", ImageState, ImageState.ERROR)
                    image.error = message
                else:
                    _move(image, "state", ImageState, ImageState.QUEUED)

    def requeue(self, image_ids: Sequence[str]) -> None:
        """Put images this process claimed back in the queue (their results could not be saved)."""
        check_move(ImageState, ImageState.PROCESSING, ImageState.QUEUED)
        with self.db.session() as s:
            s.execute(
                update(Image)
                .where(Image.id.in_(list(image_ids)), Image.state == ImageState.PROCESSING)
                .values(state=ImageState.QUEUED)
            )

    def release_heatmaps(self, study_ids: Iterable[str]) -> None:
        """Heatmaps this process claimed but could not save: pending again."""
        with self.db.session() as s:
            for study_id in study_ids:
                study = s.get(Study, study_id)
                if study is not None and study.heatmaps_state == HeatmapsState.PROCESSING:
                    _move(study, "heatmaps_state", HeatmapsState, HeatmapsState.PENDING)

    def settle(self, study_id: str, decide: Callable[[list[ImageRecord]], Settlement]) -> None:
        """Aggregate a study once none of its images is waiting: ``decide`` turns its images
        into a :class:`Settlement` (the triage engine's numbers), written here.

        The study is locked first and its images read after: two workers settling the same
        study (each finished one of its images) or an upload adding an image meanwhile cannot
        leave it ``processing`` with every image done.
        """
        now = time.time()
        with self.db.session(lock=True) as s:
            study = self.db.lock_study(s, study_id)
            if study is None:
                return
            images = list(
                s.scalars(
                    select(Image)
                    .where(Image.study_id == study_id)
                    .order_by(Image.received_at)
                    .execution_options(populate_existing=True)
                )
            )
            if any(image.state in WAITING for image in images):
                _move(study, "state", StudyState, StudyState.PROCESSING)
                return
            outcome = decide([image_record(image) for image in images])
            _move(study, "state", StudyState, outcome.state)
            study.body_part, study.model = outcome.body_part[:64], outcome.model[:64]
            study.updated_at = now
            study.error = outcome.error
            study.predicted_at = now
            scores = outcome.scores
            if scores is None:
                study.priority = study.abnormal = study.tier = study.ood_score = study.urgency = None
                study.flag_reason = ""
                study.findings = []
                _move(study, "heatmaps_state", HeatmapsState, HeatmapsState.NONE)
                return
            study.warnings = scores.warnings
            study.priority = scores.priority
            study.urgency = scores.urgency
            study.abnormal = scores.abnormal
            study.findings = list(scores.findings)
            study.probabilities_json = json.dumps(scores.probabilities)
            study.site_priority = scores.site_priority
            study.key_image_id = scores.key_image_id
            study.tier = scores.tier
            study.flag_reason = scores.flag_reason
            study.ood_score = scores.ood_score
            _move(study, "heatmaps_state", HeatmapsState, outcome.heatmaps)
            if outcome.heatmaps == HeatmapsState.NONE:
                study.explained_at = now

    def heatmap_target(self, study_id: str, limit: int) -> tuple[str, list[str]] | None:
        """(key image, its first ``limit`` listed findings) of a triaged study."""
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None or study.key_image_id is None:
                return None
            return study.key_image_id, [f.name for f in study.findings][:limit]

    def finish_heatmaps(self, study_id: str, state: HeatmapsState) -> None:
        """The background drawing of a study's heatmaps ended (``done`` or ``error``); ignored
        when the study was settled again meanwhile (its heatmaps are no longer ``processing``)."""
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is not None and study.heatmaps_state == HeatmapsState.PROCESSING:
                _move(study, "heatmaps_state", HeatmapsState, state)
                study.explained_at = time.time()

    def queue_depth(self) -> dict[str, int]:
        with self.db.session() as s:
            queued = s.scalar(select(func.count()).select_from(Image).where(Image.state.in_(WAITING)))
            heatmaps = s.scalar(
                select(func.count())
                .select_from(Study)
                .where(Study.heatmaps_state.in_((HeatmapsState.PENDING, HeatmapsState.PROCESSING)))
            )
        return {"images": int(queued or 0), "heatmaps": int(heatmaps or 0)}

    # --- start-up ----------------------------------------------------------------------------
    def recover(self, max_attempts: int | None = None) -> tuple[int, int]:
        """After a crash or kill: work that was being processed goes back to the queue.

        An image's attempt is counted when it is claimed, before any work on it, so an image
        that was in flight ``max_attempts`` times (each time the process died on it) is not
        queued again but marked ``error``: no restart loop. Returns (re-queued, given up)."""
        for kind, old, new in (
            (ImageState, ImageState.PROCESSING, ImageState.QUEUED),
            (StudyState, StudyState.PROCESSING, StudyState.QUEUED),
            (HeatmapsState, HeatmapsState.PROCESSING, HeatmapsState.PENDING),
        ):
            check_move(kind, old, new)
        given_up = 0
        with self.db.session() as s:
            if max_attempts is not None:
                poison = list(
                    s.scalars(
                        select(Image).where(
                            Image.state == ImageState.PROCESSING, Image.attempts >= max_attempts
                        )
                    )
                )
                for image in poison:
                    _move(image, "state", ImageState, ImageState.ERROR)
                    image.error = (
                        f"{image.filename}: gave up after {image.attempts} attempts: the service stopped "
                        "(crashed or was killed) each time while working on this image"
                    )
                    image.processed_at = time.time()
                given_up = len(poison)
                s.flush()
            images = s.execute(
                update(Image).where(Image.state == ImageState.PROCESSING).values(state=ImageState.QUEUED)
            ).rowcount
            s.execute(
                update(Study).where(Study.state == StudyState.PROCESSING).values(state=StudyState.QUEUED)
            )
            s.execute(
                update(Study)
                .where(Study.heatmaps_state == HeatmapsState.PROCESSING)
                .values(heatmaps_state=HeatmapsState.PENDING)
            )
        return int(images or 0), given_up

    def unsettled_study_ids(self) -> list[str]:
        """Studies still marked waiting although none of their images is: a crash came between
        storing the images' results and aggregating the study."""
        with self.db.session() as s:
            waiting = select(Image.study_id).where(Image.state.in_(WAITING))
            query = select(Study.id).where(
                Study.state.in_(WAITING_STUDY),
                Study.id.notin_(waiting),
            )
            return list(s.scalars(query))

    # --- heatmap rows ----------------------------------------------------------------------
    def heatmaps_of(self, image_id: str) -> dict[str, HeatmapRecord]:
        with self.db.session() as s:
            rows = s.scalars(select(Heatmap).where(Heatmap.image_id == image_id))
            return {h.finding: heatmap_record(h) for h in rows}

    def image(self, image_id: str) -> ImageRecord | None:
        with self.db.session() as s:
            image = s.get(Image, image_id)
            return None if image is None else image_record(image)

    def save_heatmaps(self, heatmaps: Iterable[HeatmapRecord]) -> None:
        """Upsert heatmap rows: another process (a second server instance) may draw the same
        heatmap at the same moment; the in-process job pool coalesces the rest."""
        with self.db.session() as s:
            for h in heatmaps:
                values = {
                    "image_id": h.image_id,
                    "finding": h.finding,
                    "probability": float(h.probability),
                    "threshold": float(h.threshold),
                    "box_json": json.dumps(h.box),
                    "created_at": h.created_at,
                }
                self.db.upsert(s, Heatmap, values)

    # --- reading -----------------------------------------------------------------------------
    def study(self, study_id: str) -> StudyRecord | None:
        with self.db.session() as s:
            study = s.get(Study, study_id)
            return None if study is None else study_record(study)

    def study_view(self, study_id: str) -> StudyView | None:
        """A study with its rank, images and heatmaps, read in one transaction."""
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None:
                return None
            images = list(study.images)
            ids = [image.id for image in images]
            heatmaps = s.scalars(select(Heatmap).where(Heatmap.image_id.in_(ids))).all() if ids else []
            return StudyView(
                study_record(study),
                _rank_of(s, study),
                [image_record(image) for image in images],
                [heatmap_record(h) for h in heatmaps],
            )

    def worklist(
        self,
        read_status: str | None = None,
        finding: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> WorklistPage:
        """The worklist in SQL: triaged studies, critical and STAT ones first, by priority (highest first; at equal priority
        the higher site priority, as in the ``triage`` worklist, then the oldest), then waiting
        ones (oldest first), then unreadable ones. Ranks are those of the whole worklist, so a filtered view keeps them;
        ``finding`` is a model label name."""
        group = _group()
        order = order_by(_order_columns(done_only=True))
        positions = select(
            Study.id.label("id"),
            group.label("grp"),
            func.row_number().over(partition_by=group, order_by=order).label("pos"),
        ).subquery()
        images = (
            select(func.count(Image.id)).where(Image.study_id == Study.id).correlate(Study).scalar_subquery()
        )
        query = select(Study, positions.c.grp, positions.c.pos, images).join(
            positions, positions.c.id == Study.id
        )
        filters = []
        if read_status:
            filters.append(Study.read_status == ReadStatus(read_status))
        if state:
            filters.append(Study.state == StudyState(state))
        if finding:
            filters.append(finding_filter(finding))
        query = query.where(*filters)
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(Study).where(*filters))
            query = query.order_by(positions.c.grp, positions.c.pos).offset(offset)
            if limit is not None:
                query = query.limit(limit)
            rows = [
                (study_record(study), int(pos) if grp == 0 else None, int(count))
                for study, grp, pos, count in s.execute(query)
            ]
        return WorklistPage(rows, int(total or 0))

    def recent_outcomes(self, limit: int, models: Sequence[str] | None = None) -> list[StudyOutcome]:
        """The last ``limit`` triaged studies (latest first): what the drift monitor counts;
        ``models``: only studies scored by these routed models (``""``: not routed)."""
        with self.db.session() as s:
            only = [] if models is None else [Study.model.in_(list(models))]
            query = (
                select(Study.abnormal, Study.findings, Study.tier, Study.ood_score)
                .where(Study.state == StudyState.DONE, Study.abnormal.is_not(None), *only)
                .order_by(Study.predicted_at.desc(), Study.id)
                .limit(limit)
            )
            return [
                StudyOutcome(float(abnormal), tuple(f.name for f in findings or []), tier, ood)
                for abnormal, findings, tier, ood in s.execute(query)
            ]

    # --- the DICOM node ------------------------------------------------------------------------
    def dicom_ready(self, now: float, quiet_before: float) -> list[str]:
        """DICOM studies whose results are due: pending, triaged (or unreadable), no image for
        the quiet period, heatmaps drawn, and any retry's wait over."""
        with self.db.session() as s:
            candidates = s.scalars(
                select(Study).where(
                    Study.source == "dicom",
                    Study.dicom_results_state == ResultsState.PENDING,
                    Study.state.in_((StudyState.DONE, StudyState.ERROR)),
                    Study.last_image_at <= quiet_before,
                    Study.heatmaps_state.notin_((HeatmapsState.PENDING, HeatmapsState.PROCESSING)),
                )
            )
            ready = []
            for study in candidates:
                info = _json_dict(study.dicom_results_info) or {}
                if info.get("next_attempt_at", 0.0) <= now:
                    ready.append(study.id)
            return ready

    def results_inputs(self, study_id: str) -> ResultsInputs | None:
        """A triaged study's record, its triaged images and its key image (None when not triaged)."""
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None:
                return None
            images = [i.id for i in study.images if i.state == ImageState.DONE]
            key = s.get(Image, study.key_image_id) if study.key_image_id else None
            if study.state != StudyState.DONE or not images or key is None:
                return None
            return ResultsInputs(study_record(study), images, image_record(key))

    def record_results(
        self, study_id: str, seen_last_image: float, state: ResultsState, info: dict[str, Any]
    ) -> ResultsState:
        """The outcome of building and sending a study's results. If an image arrived after
        ``seen_last_image`` the study stays ``pending`` so that updated results follow."""
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None:
                return state
            if study.last_image_at > seen_last_image:
                state = ResultsState.PENDING
                info = {**info, "note": "more images arrived while sending; updated results will follow"}
            _move(study, "dicom_results_state", ResultsState, state)
            study.dicom_results_info = json.dumps({**info, "at": time.time()})
        return state


def audit_record(entry: AuditEntry) -> AuditRecord:
    return AuditRecord(
        entry.id,
        entry.at,
        entry.actor,
        entry.address,
        entry.action,
        entry.study_id,
        entry.status,
        entry.detail,
    )


def _rank_of(session: Session, study: Study) -> int | None:
    """The study's place in the worklist, counted in SQL (no need to load every study);
    the same order as :meth:`Repository.worklist`."""
    if study.state != StudyState.DONE or study.priority is None:
        return None
    mine = {
        "queue_first": tier_rank(study.tier, study.site_priority),
        "priority": order_score(study.priority, study.urgency),
        "site_priority": study.site_priority,
        "received_at": study.received_at,
        "study": study.id,
    }
    ahead = ahead_of(_order_columns(done_only=False), mine)
    query = select(func.count()).select_from(Study).where(Study.state == StudyState.DONE, ahead)
    return int(session.scalar(query) or 0) + 1


def _new_study(
    study_id: str, info: UploadInfo, name: str, source: str, calling_ae: str | None, now: float
) -> dict:
    return {
        "id": study_id,
        "source": source,
        "study_uid": info.study_uid,
        "calling_ae": calling_ae,
        "name": info.description if source == "dicom" and info.description else name,
        "received_at": now,
        "last_image_at": now,
        "updated_at": now,
        "state": StudyState.QUEUED,
        "heatmaps_state": HeatmapsState.NONE,
        "findings": [],
    }


def _new_image(digest: str, study_id: str, info: UploadInfo, name: str, size: int, now: float) -> dict:
    return {
        "id": digest,
        "study_id": study_id,
        "filename": name,
        "format": info.format,
        "size_bytes": size,
        "width": info.width,
        "height": info.height,
        "sop_instance_uid": info.sop_instance_uid,
        "modality": info.modality,
        "view_position": info.view_position,
        "body_part": info.body_part,
        "received_at": now,
        "state": ImageState.QUEUED,
    }


def _add_image_to_study(study: Study, info: UploadInfo, source: str, now: float) -> None:
    """A new image waits in ``study`` (locked by the caller): queue it again, reopen it if
    it was read (the reader has not seen this image), keep the PACS fields."""
    _move(study, "state", StudyState, StudyState.QUEUED)
    study.last_image_at = now
    study.updated_at = now
    if source == "dicom":
        _move(study, "dicom_results_state", ResultsState, ResultsState.PENDING)
    if study.read_status in (ReadStatus.READING, ReadStatus.READ):
        study.new_images_at = study.new_images_at or now
        if study.read_status == ReadStatus.READ:
            _move(study, "read_status", ReadStatus, ReadStatus.NEW)
    for name in ("patient_id", "accession", "patient_age", "patient_sex", "study_date"):
        if not getattr(study, name) and getattr(info, name):
            setattr(study, name, getattr(info, name)[: Study.__table__.c[name].type.length])
    study.views = _add_term(study.views, info.view_position)
    study.body_parts = _add_term(study.body_parts, info.body_part)


def _replace_earlier_copies(
    session: Session, study_id: str, sop_instance_uid: str | None, keep: str
) -> list[str]:
    """One DICOM instance counts once per study: remove the study's other images with
    ``sop_instance_uid`` (their heatmap rows too), so that ``keep``, the copy just received (in
    another transfer syntax, re-sent, or corrected), is the one that counts; returns the
    removed image ids. Identical bytes are already one image (the blob's hash is its id).

    Called in the transaction that adds ``keep``, before adding it (the unique index on
    (study, SOP Instance UID) allows one row); a copy another transaction commits meanwhile
    makes the insert find a conflict, and :meth:`Repository.record_image` runs again. The
    caller deletes the removed copies' blobs and pictures once this transaction committed.
    """
    if not sop_instance_uid:
        return []
    earlier = list(
        session.scalars(
            select(Image).where(
                Image.study_id == study_id,
                Image.sop_instance_uid == sop_instance_uid,
                Image.id != keep,
            )
        )
    )
    if not earlier:
        return []
    removed = [image.id for image in earlier]
    session.execute(delete(Heatmap).where(Heatmap.image_id.in_(removed)))
    for image in earlier:
        session.delete(image)
    study = session.get(Study, study_id)
    if study is not None and study.key_image_id in removed:
        study.key_image_id = None  # the study is queued again; settling picks the new key image
    return removed


__all__ = ["Recorded", "Repository", "finding_filter"]
