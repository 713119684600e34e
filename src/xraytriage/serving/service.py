"""The service object the web API and the DICOM node share: intake, worker pool, pictures.

service = TriageService(ServeConfig(data_dir=..., model_path=...))
service.start()                      # recover unfinished work, start the worker threads
accepted = service.ingest(data, "chest.png")
...
service.stop()
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select

from xraytriage.scope import low_resolution_warning, scope_problem
from xraytriage.serving.config import ServeConfig
from xraytriage.serving.db import (
    HEATMAPS_NONE,
    QUEUED,
    Database,
    Heatmap,
    Image,
    Study,
)
from xraytriage.serving.intake import UploadInfo, UploadRejected, inspect_upload, study_id_for
from xraytriage.serving.pictures import (
    display_size_for,
    finding_file_part,
    heat_to_display,
    load_png,
    overlay_image,
    save_png,
    scale_box,
    to_display,
)
from xraytriage.serving.storage import BlobStore, safe_filename
from xraytriage.serving.worker import WorkerPool

log = logging.getLogger(__name__)


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
        self.db = Database(config.database_url)
        self.model_path = resolve_model_path(config.model_path)
        self.predictor = make_predictor(self.model_path, backend=config.backend)
        self.checkpoint = self.predictor.checkpoint
        self.engine = TriageEngine(
            self.predictor, TriageOptions(batch_size=config.batch_size, workers=0, progress=False)
        )
        self.wake = threading.Event()
        self.ready = threading.Event()
        """Set when the service is warmed up (the explainer built when heatmaps are on)."""
        self.workers = WorkerPool(self, config.workers)
        self._explainer = None
        self._explainer_lock = threading.Lock()
        self.started_at = time.time()

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        recovered = self.db.recover()
        if recovered:
            log.info("re-queued %d images left unfinished by the last run", recovered)
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
        """Check, store durably and queue one file. Raises :class:`UploadRejected`.

        Safe to call from many threads (and processes) at once, for images of one study too:
        the study row is created with ``INSERT ... ON CONFLICT DO NOTHING`` and locked before
        it is updated, so concurrent uploads never fail on the study's key nor lose an update.
        """
        name = safe_filename(filename)
        info = inspect_upload(data, name, self.config.max_file_bytes)
        header = {"body_part": info.body_part, "view_position": info.view_position}
        problem = scope_problem(header, self.checkpoint)
        if problem:  # a hand, a lateral view...: never stored, never given findings
            raise UploadRejected(name, problem, 422)
        warning = low_resolution_warning(info.width, info.height, int(self.checkpoint.preprocess.size))
        warnings = [warning] if warning else []
        digest, _ = self.store.put(data)
        study_id = study_id_for(info, digest, study_key)
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
                image = self._new_image(digest, study_id, info, name, len(data), now)
                if not self.db.insert_if_absent(s, Image, image):
                    # the same file at the same moment from someone else: theirs stands
                    raise _Duplicate(s.scalar(select(Image.study_id).where(Image.id == digest)) or study_id)
                self._add_image_to_study(study, info, source, now)
        except _Duplicate as duplicate:
            return Accepted(name, digest, duplicate.study_id, True, warnings)
        log.info("queued image %s… in study %s (%s)", digest[:12], study_id, info.format)
        self.wake.set()
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

    def display_path(self, image_id: str, radiograph=None) -> Path:
        """The display PNG of an image, drawn on first use (from ``radiograph`` when the caller
        has already read the file)."""
        path = self.store.derived(image_id) / "display.png"
        if not path.is_file():
            if radiograph is None:
                from xraytriage.io import read_radiograph

                radiograph = read_radiograph(self.store.path(image_id))
            save_png(path, to_display(radiograph.pixels, self.config.display_size))
        return path

    def heat_path(self, image_id: str, finding: str) -> Path:
        return self.store.derived(image_id) / f"heat_{finding_file_part(finding)}.png"

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
        return overlay_image(display, heat, scale_box(heatmap.box, *size, display.shape), label)

    def ensure_heatmaps(self, image_id: str, findings: list[str]) -> list[Heatmap]:
        """Heatmaps (map PNG + box row) of ``findings`` on one image; draws only the missing ones."""
        from xraytriage.explain import explain_image
        from xraytriage.io import read_radiograph

        with self.db.session() as s:
            have = {h.finding: h for h in s.query(Heatmap).filter(Heatmap.image_id == image_id)}
        missing = [f for f in findings if f not in have or not self.heat_path(image_id, f).is_file()]
        if missing:
            radiograph = read_radiograph(self.store.path(image_id))
            self.display_path(image_id, radiograph)
            shape = display_size_for(*radiograph.pixels.shape, self.config.display_size)
            explanations = explain_image(self.explainer, radiograph, missing)
            now = time.time()
            for e in explanations:  # the picture first: a row never points at a missing file
                save_png(self.heat_path(image_id, e.finding), heat_to_display(e.heatmap, shape))
            with self.db.session() as s:
                for e in explanations:
                    # an upsert: a request and the worker may draw the same heatmap at once
                    values = {
                        "image_id": image_id,
                        "finding": e.finding,
                        "probability": float(e.probability),
                        "threshold": float(e.threshold),
                        "box_json": json.dumps(e.box.to_dict() if e.box is not None else None),
                        "created_at": now,
                    }
                    self.db.upsert(s, Heatmap, values)
                    have[e.finding] = Heatmap(**values)
        return [have[f] for f in findings if f in have]

    # --- queue ---------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        return self.db.queue_depth()


__all__ = ["Accepted", "TriageService", "UploadRejected"]
