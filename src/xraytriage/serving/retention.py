"""Retention: ``serve --retention-days N`` removes what is older than N days, on a schedule.

A study nothing happened to for N days (no image received, no change such as a reader status)
is deleted with its images, heatmap rows, blobs and derived pictures; its audit entries stay
(the audit trail says who saw it, and a ``delete`` entry says when it went). The check runs
at start and then every ``every_s`` seconds (an hour by default), in batches.

Safe against running jobs: a study that is queued or being scored, whose heatmaps are
pending or being drawn, or whose images wait, is skipped, and each study is checked again
under its lock just before it is deleted (an image that arrived meanwhile keeps it). A job
that still finishes on a deleted study finds no rows and writes nothing.
"""

from __future__ import annotations

import logging
import threading
import time

from xraytriage.serving.audit import AuditLog
from xraytriage.serving.repository import Repository
from xraytriage.serving.storage import BlobStore

log = logging.getLogger(__name__)
DAY_S = 86400.0


class Retention:
    def __init__(
        self, repo: Repository, store: BlobStore, audit: AuditLog, days: float, every_s: float = 3600.0
    ) -> None:
        if days <= 0:
            raise ValueError(f"the retention period must be positive, got {days} days")
        self.repo, self.store, self.audit = repo, store, audit
        self.days, self.every_s = days, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, now: float | None = None, batch: int = 500) -> dict[str, int]:
        """Delete every expired study now; {"studies": n, "images": m}."""
        before = (time.time() if now is None else now) - self.days * DAY_S
        studies = images = 0
        while True:
            chosen = self.repo.expired_studies(before, batch)
            if not chosen:
                break
            deleted = self.repo.delete_studies(chosen, before)
            for study_id, image_ids in deleted.items():
                for image_id in image_ids:
                    self.store.discard(image_id)
                self.audit.record(
                    "delete",
                    actor="retention",
                    study_ids=[study_id],
                    detail=f"nothing happened for {self.days:g} days; {len(image_ids)} image(s) removed",
                )
            studies += len(deleted)
            images += sum(len(ids) for ids in deleted.values())
            if len(deleted) < len(chosen):
                break  # the rest became busy meanwhile: next round
        if studies:
            log.info(
                "retention: removed %d studies (%d images) older than %g days", studies, images, self.days
            )
        return {"studies": studies, "images": images}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="xraytriage-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # a database outage or a bug: try again at the next round
                log.warning("retention: this round failed; next in %g s", self.every_s, exc_info=True)
            self._stop.wait(self.every_s)


__all__ = ["DAY_S", "Retention"]
