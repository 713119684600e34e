"""The background worker pool: inference and heatmaps run here, never in a request.

Each thread claims a batch of queued images from the database (so a restart resumes exactly
where a crash left off), reads and scores them with the triage engine's code, settles the
studies whose images are all done (aggregate, priority, findings: the same rules as the
``triage`` command), then draws heatmaps for settled studies. Predictions come first: a thread
only draws heatmaps when no image is waiting, so results appear as fast as possible.

Poison images: an image's attempt is counted (and committed) when it is claimed, before any
work, so after ``MAX_ATTEMPTS`` crashes or kills on it the next start gives up on it with an
error row (``Database.recover``); an image that was in flight during a crash is retried alone.
Full disk: work whose results cannot be saved is remembered and put back in the queue (and
studies settled, heatmaps re-queued) as soon as a probe write succeeds again; meanwhile the
threads pause instead of failing every image.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from xraytriage.scope import low_resolution_warning
from xraytriage.serving.db import (
    DONE,
    ERROR,
    HEATMAPS_DONE,
    HEATMAPS_NONE,
    HEATMAPS_PENDING,
    PROCESSING,
    QUEUED,
    Image,
    Study,
)
from xraytriage.triage.engine import ImageResult
from xraytriage.triage.heatmaps import listed_findings
from xraytriage.triage.worklist import parse_findings

if TYPE_CHECKING:
    from xraytriage.serving.service import TriageService

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3


class WorkerPool:
    def __init__(self, service: TriageService, threads: int) -> None:
        self.service = service
        self.threads = threads
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stuck_lock = threading.Lock()
        self._stuck_images: set[str] = set()
        self._stuck_studies: set[str] = set()
        self._stuck_heatmaps: set[str] = set()

    def start(self) -> None:
        for i in range(self.threads):
            thread = threading.Thread(
                target=self._loop, args=(i,), name=f"xraytriage-worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.service.wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _loop(self, index: int) -> None:
        service = self.service
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:  # a bug must not kill the worker; the work stays in the database
                log.exception("worker %d: unexpected error", index)
                busy = False
            if not busy:
                service.wake.wait(service.config.poll_seconds)
                service.wake.clear()

    def step(self) -> bool:
        """Do one unit of work (a batch of images, or one study's heatmaps); False when idle
        (or paused: the storage cannot take writes)."""
        service = self.service
        if not service.storage.healthy():
            return False
        self._release_stuck()
        images = service.db.claim_images(service.config.batch_size)
        if images:
            self.predict(images)
            return True
        if service.config.heatmaps:
            study_id = service.db.claim_heatmap_study()
            if study_id is not None:
                self.draw_heatmaps(study_id)
                return True
        return False

    # --- storage trouble -----------------------------------------------------------------
    def _storage_failed(self, exc: BaseException, images=(), studies=(), heatmaps=()) -> bool:
        """Remember work a storage error left half-done; False when ``exc`` is something else."""
        from xraytriage.serving.storage import is_storage_error

        if not is_storage_error(exc):
            return False
        self.service.storage.note(exc)
        with self._stuck_lock:
            self._stuck_images.update(images)
            self._stuck_studies.update(studies)
            self._stuck_heatmaps.update(heatmaps)
        return True

    def _release_stuck(self) -> None:
        """Storage works again: re-queue images, settle studies, re-queue heatmaps left stuck."""
        with self._stuck_lock:
            images, studies, heatmaps = self._stuck_images, self._stuck_studies, self._stuck_heatmaps
            self._stuck_images, self._stuck_studies, self._stuck_heatmaps = set(), set(), set()
        if not (images or studies or heatmaps):
            return
        try:
            if images:
                self.service.db.requeue(sorted(images))
            with self.service.db.session() as s:
                for study_id in heatmaps:
                    study = s.get(Study, study_id)
                    if study is not None and study.heatmaps_state == PROCESSING:
                        study.heatmaps_state = HEATMAPS_PENDING
            for study_id in sorted(studies):
                self.settle(study_id)
        except Exception as exc:
            if not self._storage_failed(exc, images, studies, heatmaps):
                raise
            return
        log.info(
            "storage is back: re-queued %d images, %d studies' heatmaps; settled %d studies",
            len(images),
            len(heatmaps),
            len(studies),
        )

    # --- predictions ---------------------------------------------------------------------
    def predict(self, images: list[Image]) -> None:
        ids = [image.id for image in images]
        studies = sorted({image.study_id for image in images})
        try:
            self._predict(images)
        except Exception as exc:
            if not self._storage_failed(exc, ids, studies):
                raise
            log.warning("could not save the results of %d images: the storage is full", len(ids))

    def _predict(self, images: list[Image]) -> None:
        service = self.service
        by_path = {str(service.store.path(image.id)): image for image in images}
        try:
            results = list(service.engine.iter_results(list(by_path)))
        except Exception as exc:
            log.exception("batch of %d images failed", len(images))
            self._retry_or_fail(images, f"internal error while scoring: {type(exc).__name__}")
            return
        labels = list(service.checkpoint.label_names)
        now = time.time()
        with service.db.session() as s:
            for result in results:
                image = s.get(Image, by_path[result.path].id)
                if image is None:
                    continue
                image.processed_at = now
                if result.ok and result.probabilities is not None:
                    image.state = DONE
                    image.error = ""
                    image.probabilities_json = json.dumps(
                        {n: float(p) for n, p in zip(labels, result.probabilities, strict=True)}
                    )
                    image.abnormal = result.abnormal
                    image.site_priority = result.site_priority
                else:
                    image.state = ERROR
                    # the engine names the blob; the user knows the file by the name they gave
                    image.error = (result.error or "unknown error").replace(result.path, image.filename)
        for study_id in sorted({image.study_id for image in images}):
            self.settle(study_id)
        log.info("scored %d images", len(results))

    def _retry_or_fail(self, images: list[Image], message: str) -> None:
        with self.service.db.session() as s:
            for claimed in images:
                image = s.get(Image, claimed.id)
                if image is None:
                    continue
                if image.attempts >= MAX_ATTEMPTS:
                    image.state, image.error = ERROR, message
                else:
                    image.state = QUEUED
        for study_id in {image.study_id for image in images}:
            self.settle(study_id)

    def settle(self, study_id: str) -> None:
        """Aggregate a study once none of its images is waiting.

        The study is locked first and its images read after: two workers settling the same
        study (each finished one of its images) or an upload adding an image meanwhile cannot
        leave it ``processing`` with every image done.
        """
        service = self.service
        labels = list(service.checkpoint.label_names)
        now = time.time()
        with service.db.session(lock=True) as s:
            study = service.db.lock_study(s, study_id)
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
            if any(image.state in (QUEUED, PROCESSING) for image in images):
                study.state = PROCESSING
                return
            ok = [image for image in images if image.state == DONE]
            failed = [image for image in images if image.state == ERROR]
            study.updated_at = now
            study.error = "; ".join(image.error for image in failed)
            if not ok:
                study.state = ERROR
                study.priority = study.abnormal = None
                study.findings = ""
                study.heatmaps_state = HEATMAPS_NONE
                study.predicted_at = now
                return
            results = [
                ImageResult(
                    path=image.id,
                    study=study.id,
                    probabilities=np.array([image.probabilities[n] for n in labels], dtype=np.float64),
                    abnormal=image.abnormal,
                    site_priority=image.site_priority,
                )
                for image in ok
            ]
            row = service.engine.study_rows(results)[0]
            study.state = DONE
            size = int(service.checkpoint.preprocess.size)
            caveats = (low_resolution_warning(image.width, image.height, size) for image in ok)
            study.warnings = "; ".join(dict.fromkeys(w for w in caveats if w))
            study.priority = row.priority
            study.abnormal = row.abnormal
            study.findings = row.findings
            study.probabilities_json = json.dumps(row.probabilities)
            study.site_priority = row.site_priority
            study.key_image_id = row.path
            study.predicted_at = now
            wanted = listed_findings(row)[: service.config.heatmap_findings]
            study.heatmaps_state = HEATMAPS_PENDING if (service.config.heatmaps and wanted) else HEATMAPS_NONE
            if study.heatmaps_state == HEATMAPS_NONE:
                study.explained_at = now

    # --- heatmaps ------------------------------------------------------------------------
    def draw_heatmaps(self, study_id: str) -> None:
        service = self.service
        with service.db.session() as s:
            study = s.get(Study, study_id)
            if study is None or study.key_image_id is None:
                return
            image_id = study.key_image_id
            findings = [name for name, _ in parse_findings(study.findings)]
            findings = findings[: service.config.heatmap_findings]
        try:
            service.ensure_heatmaps(image_id, findings)
            state = HEATMAPS_DONE
        except Exception as exc:  # the predictions stand; the pictures are reported missing
            if self._storage_failed(exc, heatmaps=[study_id]):
                log.warning("study %s: heatmaps wait for storage space", study_id)
                return  # re-queued once the storage takes writes again
            log.warning("study %s: heatmaps failed: %s", study_id, type(exc).__name__)
            state = ERROR
        try:
            with service.db.session() as s:
                study = s.get(Study, study_id)
                if study is not None and study.heatmaps_state == PROCESSING:
                    study.heatmaps_state = state
                    study.explained_at = time.time()
        except Exception as exc:
            if not self._storage_failed(exc, heatmaps=[study_id]):
                raise
