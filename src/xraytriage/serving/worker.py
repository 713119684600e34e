"""The background worker pool: inference and heatmaps run here, never in a request.

Each thread loops: claim a batch of queued images from the database (so a restart resumes
exactly where a crash left off) and run the scoring job on it, which settles their studies;
only when no image waits, claim one study whose heatmaps are due and run the drawing job.
Predictions come first, so results appear as fast as possible. The jobs themselves are in
:mod:`~xraytriage.serving.jobs`.

Full disk: work whose results cannot be saved is set aside (:class:`SetAside`) and put back
in the queue (studies settled, heatmaps re-queued) as soon as a probe write succeeds again;
meanwhile the threads pause instead of failing every image. Poison images: see
``Repository.claim_images`` and ``Repository.recover``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from xraytriage.serving.jobs import Jobs
from xraytriage.serving.outages import DatabaseMonitor, is_database_outage
from xraytriage.serving.records import ImageRecord
from xraytriage.serving.repository import Repository
from xraytriage.serving.storage import StorageMonitor, is_storage_error

log = logging.getLogger(__name__)


@dataclass
class SetAside:
    """Work a storage error left half-done, kept until the storage takes writes again."""

    images: set[str] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)
    heatmaps: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, images: Iterable[str] = (), studies: Iterable[str] = (), heatmaps: Iterable[str] = ()
    ) -> None:
        with self.lock:
            self.images.update(images)
            self.studies.update(studies)
            self.heatmaps.update(heatmaps)

    def take(self) -> tuple[set[str], set[str], set[str]]:
        with self.lock:
            taken = self.images, self.studies, self.heatmaps
            self.images, self.studies, self.heatmaps = set(), set(), set()
            return taken


class WorkerPool:
    def __init__(
        self,
        repo: Repository,
        jobs: Jobs,
        storage: StorageMonitor,
        wake: threading.Event,
        threads: int,
        batch_size: int,
        heatmaps: bool,
        poll_seconds: float,
        database: DatabaseMonitor | None = None,
    ) -> None:
        self.repo = repo
        self.jobs = jobs
        self.storage = storage
        self.wake = wake
        self.threads = threads
        self.batch_size = batch_size
        self.heatmaps = heatmaps
        self.poll_seconds = poll_seconds
        self.database = database
        self.set_aside = SetAside()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.threads):
            thread = threading.Thread(
                target=self._loop, args=(i,), name=f"xraytriage-worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _loop(self, index: int) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step()
            except Exception:  # a bug must not kill the worker; the work stays in the database
                log.exception("worker %d: unexpected error", index)
                busy = False
            if not busy:
                self.wake.wait(self.poll_seconds)
                self.wake.clear()

    def step(self) -> bool:
        """Do one unit of work (a batch of images, or one study's heatmaps); False when idle
        (or paused: the storage cannot take writes)."""
        if not self.storage.healthy():
            return False
        if self.database is not None and not self.database.healthy():
            return False  # paused until the database answers a probe again
        self._release_set_aside()
        try:
            images = self.repo.claim_images(self.batch_size)
        except Exception as exc:
            return self._outage(exc)
        if images:
            self.predict(images)
            return True
        if self.heatmaps:
            try:
                study_id = self.repo.claim_heatmap_study()
            except Exception as exc:
                return self._outage(exc)
            if study_id is not None:
                self.draw(study_id)
                return True
        return False

    def _outage(self, exc: Exception) -> bool:
        """A claim failed: a database outage pauses the worker (False); anything else is raised."""
        if not is_database_outage(exc):
            raise exc
        if self.database is not None:
            self.database.note(exc)
        return False

    def predict(self, images: Sequence[ImageRecord]) -> None:
        """The scoring job on claimed images; set aside when the storage is full."""
        ids = [image.id for image in images]
        studies = sorted({image.study_id for image in images})
        if self._guarded(lambda: self.jobs.score(images), images=ids, studies=studies):
            log.warning("could not save the results of %d images; they go back to the queue", len(ids))

    def draw(self, study_id: str) -> None:
        """The heatmap job on a claimed study; set aside when the storage is full."""
        if self._guarded(lambda: self.jobs.draw(study_id), heatmaps=[study_id]):
            log.warning("study %s: heatmaps wait for storage space or the database", study_id)

    def _guarded(self, job: Callable[[], object], **work: Sequence[str]) -> bool:
        """Run ``job``; True when a storage error stopped it (``work`` is then set aside)."""
        try:
            job()
        except Exception as exc:
            if is_database_outage(exc) and not is_storage_error(
                exc
            ):  # retried already: wait for the database, then re-queue
                if self.database is not None:
                    self.database.note(exc)
                log.warning("database unavailable: %d images, %d studies set aside until it is back",
                            len(work.get("images", ())), len(work.get("studies", ())))  # fmt: skip
                self.set_aside.add(**work)
                return True
            if not is_storage_error(exc):
                raise
            self.storage.note(exc)
            self.set_aside.add(**work)
            return True
        return False

    def _release_set_aside(self) -> None:
        """Storage works again: re-queue images, settle studies, re-queue heatmaps set aside."""
        images, studies, heatmaps = self.set_aside.take()
        if not (images or studies or heatmaps):
            return

        def release() -> None:
            if images:
                self.repo.requeue(sorted(images))
            self.repo.release_heatmaps(heatmaps)
            for study_id in sorted(studies):
                self.jobs.settle(study_id)

        if self._guarded(release, images=images, studies=studies, heatmaps=heatmaps):
            return
        log.info(
            "storage and database are back: re-queued %d images, %d studies' heatmaps; settled %d studies",
            len(images),
            len(heatmaps),
            len(studies),
        )


__all__ = ["SetAside", "WorkerPool"]
