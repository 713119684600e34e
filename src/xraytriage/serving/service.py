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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from sqlalchemy.exc import IntegrityError

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
from xraytriage.serving.intake import UploadRejected, inspect_upload, study_id_for
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

    def to_dict(self) -> dict:
        return asdict(self)


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
        """Check, store durably and queue one file. Raises :class:`UploadRejected`."""
        name = safe_filename(filename)
        info = inspect_upload(data, name, self.config.max_file_bytes)
        digest, _ = self.store.put(data)
        study_id = study_id_for(info, digest, study_key)
        now = time.time()
        try:
            with self.db.session() as s:
                existing = s.get(Image, digest)
                if existing is not None:
                    return Accepted(name, digest, existing.study_id, True)
                study = s.get(Study, study_id)
                if study is None:
                    study = Study(
                        id=study_id,
                        source=source,
                        study_uid=info.study_uid,
                        calling_ae=calling_ae,
                        name=info.description if source == "dicom" and info.description else name,
                        received_at=now,
                        heatmaps_state=HEATMAPS_NONE,
                    )
                    s.add(study)
                study.state = QUEUED
                study.last_image_at = now
                study.updated_at = now
                if source == "dicom":
                    study.dicom_results_state = "pending"
                s.add(
                    Image(
                        id=digest,
                        study_id=study_id,
                        filename=name,
                        format=info.format,
                        size_bytes=len(data),
                        width=info.width,
                        height=info.height,
                        sop_instance_uid=info.sop_instance_uid,
                        modality=info.modality,
                        received_at=now,
                        state=QUEUED,
                    )
                )
                replaced = replace_earlier_copies(s, study_id, info.sop_instance_uid, keep=digest)
        except IntegrityError:  # the same file, uploaded at the same moment by someone else
            with self.db.session() as s:
                existing = s.get(Image, digest)
                if existing is None:
                    raise
                return Accepted(name, digest, existing.study_id, True)
        log.info("queued image %s… in study %s (%s)", digest[:12], study_id, info.format)
        if replaced:
            log.info("image %s… replaces %d earlier copies of its SOP instance", digest[:12], len(replaced))
        self.wake.set()
        return Accepted(name, digest, study_id, False)

    # --- reader status -------------------------------------------------------------------
    def set_read_status(self, study_id: str, status: str) -> bool:
        with self.db.session() as s:
            study = s.get(Study, study_id)
            if study is None:
                return False
            study.read_status = status
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
            with self.db.session() as s:
                for e in explanations:
                    save_png(self.heat_path(image_id, e.finding), heat_to_display(e.heatmap, shape))
                    row = s.get(Heatmap, (image_id, e.finding)) or Heatmap(
                        image_id=image_id, finding=e.finding
                    )
                    row.probability = e.probability
                    row.threshold = e.threshold
                    row.box_json = json.dumps(e.box.to_dict() if e.box is not None else None)
                    row.created_at = now
                    s.add(row)
                    have[e.finding] = row
        return [have[f] for f in findings if f in have]

    # --- queue ---------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        return self.db.queue_depth()


__all__ = ["Accepted", "TriageService", "UploadRejected"]
