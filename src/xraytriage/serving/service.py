"""The service object the web API and the DICOM node share: intake, worker pool, pictures.

service = TriageService(ServeConfig(data_dir=..., model_path=...))
service.start()                      # recover unfinished work, start the worker threads
accepted = service.ingest(data, "chest.png")
...
service.stop()
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from xraytriage.scope import low_resolution_warning, scope_problem
from xraytriage.serving import decode
from xraytriage.serving.config import ServeConfig
from xraytriage.serving.db import (
    HEATMAPS_NONE,
    QUEUED,
    Database,
    Heatmap,
    Image,
    Study,
)
from xraytriage.serving.dedup import replace_earlier_copies
from xraytriage.serving.heatmap_jobs import HeatmapJobs
from xraytriage.serving.intake import UploadInfo, UploadRejected, inspect_upload, study_id_for
from xraytriage.serving.pictures import (
    display_size_for,
    finding_file_part,
    heat_layer_png,
    heat_to_display,
    load_png,
    overlay_image,
    png_bytes,
    save_png,
    scale_box,
    to_display,
)
from xraytriage.serving.storage import (
    BlobStore,
    StorageMonitor,
    is_storage_error,
    safe_filename,
    write_atomic,
)
from xraytriage.serving.worker import MAX_ATTEMPTS, WorkerPool

log = logging.getLogger(__name__)
DISPLAY = "\x00display"
"""Pseudo-finding: the display picture is drawn by the same coalesced job pool as heatmaps."""
ORPHAN_GRACE_S = 300.0
"""A blob without a database row is removed at start once it is this old (an upload that a
kill interrupted between storing the file and committing its row)."""


@dataclass
class Accepted:
    filename: str
    image_id: str
    study_id: str
    duplicate: bool
    warnings: list[str] = field(default_factory=list)
    """Accepted, with caveats the reader should see (e.g. low resolution)."""

    def to_dict(self) -> dict:
        return asdict(self)


class _Duplicate(Exception):
    def __init__(self, study_id: str) -> None:
        self.study_id = study_id


def _add_term(terms: str, term: str) -> str:
    """``"PA"`` + ``"AP"`` -> ``"PA, AP"`` (each once), for a study's views and body parts."""
    items = [t for t in terms.split(", ") if t]
    if term and term not in items:
        items.append(term)
    return ", ".join(items)[:64]


class TriageService:
    def __init__(self, config: ServeConfig) -> None:
        from xraytriage.cli.common import resolve_model_path
        from xraytriage.models.inference import make_predictor
        from xraytriage.triage.engine import TriageEngine, TriageOptions

        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = BlobStore(config.data_dir)
        self.storage = StorageMonitor(config.data_dir, config.min_free_bytes)
        self.db = Database(config.database_url)
        self.model_path = resolve_model_path(config.model_path)
        self.predictor = make_predictor(self.model_path, backend=config.backend)
        self.checkpoint = self.predictor.checkpoint
        self.engine = TriageEngine(
            self.predictor,
            TriageOptions(batch_size=config.batch_size, workers=0, progress=False),
            prepare=functools.partial(
                decode.prepare_for_model, max_pixels=config.max_pixels, max_side=config.display_size
            ),
        )
        self.wake = threading.Event()
        self.ready = threading.Event()
        """Set when the service is warmed up (the explainer built when heatmaps are on)."""
        self.workers = WorkerPool(self, config.workers)
        self.heatmap_jobs = HeatmapJobs(self._draw_job, config.heatmap_threads, config.heatmap_queue)
        self._explainer = None
        self._explainer_lock = threading.Lock()
        self.started_at = time.time()

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        try:
            swept = self.store.sweep(self.db.image_ids(), ORPHAN_GRACE_S)
            if any(swept.values()):
                log.info("removed %d temporary files and %d orphan blobs", swept["temp"], swept["orphans"])
        except OSError as exc:
            log.warning("could not clean the data folder: %s", exc)
        recovered, given_up = self.db.recover(MAX_ATTEMPTS)
        if recovered:
            log.info("re-queued %d images left unfinished by the last run", recovered)
        if given_up:
            log.warning("gave up on %d images that were in flight %d times", given_up, MAX_ATTEMPTS)
        for study_id in self.db.unsettled_study_ids():
            self.workers.settle(study_id)
        self.workers.start()
        self.wake.set()
        if self.config.heatmaps and self.config.workers > 0:
            # build the explainer (a PyTorch copy of the network) now, not on the first study;
            # /healthz says "ready" once it is there
            threading.Thread(target=self._warm_up, name="xraytriage-warm-up", daemon=True).start()
        else:
            self.ready.set()

    def _warm_up(self) -> None:
        try:
            _ = self.explainer.feature_shape
        except Exception:  # heatmaps will report their own error when asked for
            log.warning("could not prepare the explainer", exc_info=True)
        finally:
            self.ready.set()

    def stop(self) -> None:
        self.workers.stop()
        self.heatmap_jobs.shutdown()

    @property
    def model_info(self) -> dict:
        ckpt = self.checkpoint
        return {
            "name": ckpt.name,
            "version": ckpt.package_version,
            "created": ckpt.created,
            "backbone": ckpt.model.backbone,
            "input_size": int(ckpt.preprocess.size),
            "labels": list(ckpt.label_names),
            "findings": list(ckpt.findings),
            "thresholds": {n: ckpt.threshold(n) for n in ckpt.findings},
            "study_flag_threshold": ckpt.study_flag_threshold,
            "backend": getattr(self.predictor, "name", ""),
            "file": self.model_path.name,
        }

    # --- intake --------------------------------------------------------------------------
    def ingest(
        self,
        data: bytes,
        filename: str | None,
        source: str = "upload",
        calling_ae: str | None = None,
        study_key: str | None = None,
    ) -> Accepted:
        """Check, store durably and queue one file given as bytes (the DICOM node). Raises
        :class:`UploadRejected` (status 507 when the storage is full)."""
        return self._ingest(data, filename, source, calling_ae, study_key)

    def ingest_file(
        self,
        path: Path,
        digest: str,
        filename: str | None,
        source: str = "upload",
        study_key: str | None = None,
    ) -> Accepted:
        """Like :meth:`ingest` for an upload streamed into ``path`` (a file in the store's
        ``tmp`` folder, hashed to ``digest`` while it was written): it is moved into place,
        never read into memory. The caller removes ``path`` if it is still there."""
        return self._ingest(Path(path), filename, source, None, study_key, digest)

    def _ingest(
        self,
        source: bytes | Path,
        filename: str | None,
        origin: str,
        calling_ae: str | None,
        study_key: str | None,
        digest: str | None = None,
    ) -> Accepted:
        name = safe_filename(filename)
        info = inspect_upload(source, name, self.config.max_file_bytes, self.config.max_pixels)
        header = {"body_part": info.body_part, "view_position": info.view_position}
        problem = scope_problem(header, self.checkpoint)
        if problem:  # a hand, a lateral view...: never stored, never given findings
            raise UploadRejected(name, problem, 422)
        warning = low_resolution_warning(info.width, info.height, int(self.checkpoint.preprocess.size))
        warnings = [warning] if warning else []
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        try:
            self.storage.refuse_if_full(0 if isinstance(source, Path) else size)
            if isinstance(source, bytes):
                digest, created = self.store.put(source)
            else:
                assert digest is not None
                created = self.store.put_file(source, digest)
        except OSError as exc:
            raise self._storage_rejection(name, exc) from None
        assert digest is not None
        study_id = study_id_for(info, digest, study_key)
        try:
            accepted = self._record(digest, study_id, name, info, size, origin, calling_ae, warnings)
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            if created:  # nothing refers to it: no orphan left behind
                self.store.remove(digest)
            raise self._storage_rejection(name, exc) from None
        if not accepted.duplicate:
            log.info("queued image %s… in study %s (%s)", digest[:12], study_id, info.format)
            self.wake.set()
        return accepted

    def _storage_rejection(self, name: str, exc: BaseException) -> UploadRejected:
        if not is_storage_error(exc):
            raise exc
        self.storage.note(exc)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "storage is full" not in detail:
            detail = f"the server's storage is full ({detail}): nothing was stored; try again later"
        return UploadRejected(name, detail, 507)

    def _record(
        self,
        digest: str,
        study_id: str,
        name: str,
        info: UploadInfo,
        size: int,
        source: str,
        calling_ae: str | None,
        warnings: list[str],
    ) -> Accepted:
        """The image and its study in the database. Safe from many threads (and processes) at
        once, for images of one study too: the study row is created with ``INSERT ... ON
        CONFLICT DO NOTHING`` and locked before it is updated, so concurrent uploads never fail
        on the study's key nor lose an update."""
        now = time.time()
        try:
            with self.db.session(lock=True) as s:
                existing = s.get(Image, digest)
                if existing is not None:
                    raise _Duplicate(existing.study_id)
                self.db.insert_if_absent(
                    s, Study, self._new_study(study_id, info, name, source, calling_ae, now)
                )
                study = self.db.lock_study(s, study_id)
                image = self._new_image(digest, study_id, info, name, size, now)
                if not self.db.insert_if_absent(s, Image, image):
                    # the same file at the same moment from someone else: theirs stands
                    raise _Duplicate(s.scalar(select(Image.study_id).where(Image.id == digest)) or study_id)
                self._add_image_to_study(study, info, source, now)
                replaced = replace_earlier_copies(s, study_id, info.sop_instance_uid, keep=digest)
        except _Duplicate as duplicate:
            return Accepted(name, digest, duplicate.study_id, True, warnings)
        if replaced:
            log.info("image %s… replaces %d earlier copies of its SOP instance", digest[:12], len(replaced))
        return Accepted(name, digest, study_id, False, warnings)

    @staticmethod
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
            "state": QUEUED,
            "heatmaps_state": HEATMAPS_NONE,
        }

    @staticmethod
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
            "state": QUEUED,
        }

    @staticmethod
    def _add_image_to_study(study: Study, info: UploadInfo, source: str, now: float) -> None:
        """A new image waits in ``study`` (locked by the caller): queue it again, reopen it if
        it was read (the reader has not seen this image), keep the PACS fields."""
        study.state = QUEUED
        study.last_image_at = now
        study.updated_at = now
        if source == "dicom":
            study.dicom_results_state = "pending"
        if study.read_status in ("reading", "read"):
            study.new_images_at = study.new_images_at or now
            if study.read_status == "read":
                study.read_status = "new"
        for name in ("patient_id", "accession", "patient_age", "patient_sex", "study_date"):
            if not getattr(study, name) and getattr(info, name):
                setattr(study, name, getattr(info, name)[: Study.__table__.c[name].type.length])
        study.views = _add_term(study.views, info.view_position)
        study.body_parts = _add_term(study.body_parts, info.body_part)

    # --- reader status -------------------------------------------------------------------
    def set_read_status(self, study_id: str, status: str) -> bool:
        with self.db.session(lock=True) as s:
            study = self.db.lock_study(s, study_id)
            if study is None:
                return False
            study.read_status = status
            if status == "read":  # whatever arrived is seen now
                study.new_images_at = None
            study.updated_at = time.time()
        return True

    # --- pictures ------------------------------------------------------------------------
    @property
    def explainer(self):
        with self._explainer_lock:
            if self._explainer is None:
                from xraytriage.explain import Explainer

                self._explainer = Explainer(self.checkpoint)
            return self._explainer

    def display_file(self, image_id: str) -> Path:
        return self.store.derived(image_id) / "display.png"

    def display_path(self, image_id: str) -> Path:
        """The display PNG of an image, drawn on first use (by the coalesced job pool)."""
        path = self.display_file(image_id)
        if not path.is_file():
            self.heatmap_jobs.run(image_id, [DISPLAY])
        return path

    def heat_path(self, image_id: str, finding: str) -> Path:
        return self.store.derived(image_id) / f"heat_{finding_file_part(finding)}.png"

    def picture_path(self, image_id: str, finding: str, style: str) -> Path:
        """The finished heatmap picture the API serves: ``overlay`` (radiograph, heat, box,
        label) or ``layer`` (transparent colour layer)."""
        return self.store.derived(image_id) / f"{style}_{finding_file_part(finding)}.png"

    def overlay(
        self,
        image_id: str,
        heatmap: Heatmap,
        size: tuple[int, int],
        label: str,
        display: np.ndarray | None = None,
    ) -> PILImage.Image:
        """A drawn heatmap over the display image, with its box (``size`` = the original
        width, height the box is in) and ``label``; pass ``display`` when already loaded."""
        if display is None:
            display = load_png(self.display_path(image_id))
        heat = load_png(self.heat_path(image_id, heatmap.finding))
        return overlay_image(
            display,
            heat,
            scale_box(heatmap.box, *size, display.shape),
            label,
            finding=heatmap.finding,
            probability=heatmap.probability,
            threshold=heatmap.threshold,
        )

    @staticmethod
    def picture_item(finding: str, style: str) -> str:
        """Job item for a finished picture of a finding (see :meth:`_draw_pictures`)."""
        return f"{finding}\x00{style}"

    def _missing(self, image_id: str, items: list[str]) -> list[str]:
        """Which job items still have to be drawn for one image: :data:`DISPLAY`, a finding
        (its map and box) or :meth:`picture_item` (a finding's overlay or layer picture)."""
        with self.db.session() as s:
            have = {h.finding for h in s.query(Heatmap).filter(Heatmap.image_id == image_id)}
        missing = []
        for item in items:
            finding, _, style = item.partition("\x00")
            if item == DISPLAY:
                done = self.display_file(image_id).is_file()
            else:
                done = finding in have and self.heat_path(image_id, finding).is_file()
                done = done and (not style or self.picture_path(image_id, finding, style).is_file())
            if not done:
                missing.append(item)
        return missing

    def heatmap_futures(self, image_id: str, items: list[str]) -> list[Future]:
        """Jobs to wait on until ``items`` of one image are drawn (none when they are);
        :class:`~xraytriage.serving.heatmap_jobs.HeatmapQueueFull` when too many wait."""
        missing = self._missing(image_id, items)
        return self.heatmap_jobs.submit(image_id, missing) if missing else []

    def ensure_heatmaps(self, image_id: str, findings: list[str]) -> list[Heatmap]:
        """Heatmaps (map PNG + box row) of ``findings`` on one image; draws only the missing
        ones, sharing the job with anyone already drawing them. Blocks."""
        missing = self._missing(image_id, findings)
        if missing:
            self.heatmap_jobs.run(image_id, missing)
        with self.db.session() as s:
            have = {h.finding: h for h in s.query(Heatmap).filter(Heatmap.image_id == image_id)}
        return [have[f] for f in findings if f in have]

    def _draw_job(self, image_id: str, items: list[str]) -> None:
        try:
            self._draw_pictures(image_id, items)
        except Exception as exc:
            if is_storage_error(exc):
                self.storage.note(exc)
            raise

    def _draw_pictures(self, image_id: str, items: list[str]) -> None:
        """One job: read the image once, reduced to the display size, and draw what is missing
        of ``items`` (display picture, maps and boxes, overlay or layer pictures)."""
        from xraytriage.explain import explain_image

        missing = self._missing(image_id, items)  # another job may have drawn them meanwhile
        if not missing:
            return
        log.info("image %s…: drawing %s", image_id[:12], ", ".join(i.replace("\x00", " ") for i in missing))
        with self.db.session() as s:
            have = {h.finding: h for h in s.query(Heatmap).filter(Heatmap.image_id == image_id)}
            image = s.get(Image, image_id)
            size = (image.width or 1, image.height or 1) if image is not None else (1, 1)
        findings = list(dict.fromkeys(item.partition("\x00")[0] for item in missing if item != DISPLAY))
        maps = [f for f in findings if f not in have or not self.heat_path(image_id, f).is_file()]
        if maps or not self.display_file(image_id).is_file():
            radiograph = decode.read_reduced(
                str(self.store.path(image_id)), self.config.max_pixels, self.config.display_size
            )
            width = int(radiograph.meta.get("width", radiograph.width))
            height = int(radiograph.meta.get("height", radiograph.height))
            shape = display_size_for(height, width, self.config.display_size)
            if not self.display_file(image_id).is_file():
                save_png(self.display_file(image_id), to_display(radiograph.pixels, self.config.display_size))
            if maps:
                sx, sy = width / radiograph.width, height / radiograph.height
                explanations = explain_image(self.explainer, radiograph, maps)
                del radiograph
                now = time.time()
                for e in explanations:  # the picture first: a row never points at a missing file
                    save_png(self.heat_path(image_id, e.finding), heat_to_display(e.heatmap, shape))
                with self.db.session() as s:
                    for e in explanations:
                        box = e.box.scaled(sx, sy).to_dict() if e.box is not None else None
                        values = {
                            "image_id": image_id,
                            "finding": e.finding,
                            "probability": float(e.probability),
                            "threshold": float(e.threshold),
                            "box_json": json.dumps(box),
                            "created_at": now,
                        }
                        # an upsert: another process (a second server instance) may draw the
                        # same heatmap at the same moment; the in-process job pool coalesces the rest
                        self.db.upsert(s, Heatmap, values)
                        have[e.finding] = Heatmap(**values)
        for item in missing:
            finding, _, style = item.partition("\x00")
            if style and finding in have:
                self._draw_picture(image_id, have[finding], style, size)

    def _draw_picture(self, image_id: str, heatmap: Heatmap, style: str, size: tuple[int, int]) -> None:
        """The overlay (radiograph, heat, box, label) or the transparent layer, kept as a file."""
        from xraytriage.explain.overlay import overlay_label

        if style == "layer":
            data = heat_layer_png(
                load_png(self.heat_path(image_id, heatmap.finding)), finding=heatmap.finding
            )
        else:
            label = overlay_label(heatmap.finding, heatmap.probability, heatmap.threshold)
            data = png_bytes(self.overlay(image_id, heatmap, size, label))
        write_atomic(self.picture_path(image_id, heatmap.finding, style), data, durable=False)

    # --- queue ---------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        return {**self.db.queue_depth(), "heatmap_jobs": self.heatmap_jobs.pending()}


__all__ = ["Accepted", "TriageService", "UploadRejected"]
