"""Heatmap work as coalesced jobs on a small bounded pool.

One job per (image, finding): a request (or the background worker) that wants a heatmap that
is already being drawn waits on that job instead of starting its own, so fourteen concurrent
requests for one heatmap cost one drawing, and never more than ``threads`` drawings run at
once. At most ``max_pending`` jobs wait; beyond that :class:`HeatmapQueueFull` (HTTP 503).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from xraytriage.errors import HeatmapQueueFull

log = logging.getLogger(__name__)


class HeatmapJobs:
    def __init__(self, draw: Callable[[str, list[str]], None], threads: int, max_pending: int) -> None:
        self._draw = draw
        self.max_pending = max_pending
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="xraytriage-heatmap")
        self._jobs: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        self.started = 0
        """Jobs started since the service started (coalesced requests do not count)."""

    def submit(self, image_id: str, findings: list[str], bounded: bool = True) -> list[Future]:
        """Futures that complete when ``findings`` of ``image_id`` are drawn: the jobs already
        running for some of them, plus one new job for the rest (``bounded``: refused with
        :class:`HeatmapQueueFull` when ``max_pending`` jobs wait)."""
        with self._lock:
            waiting = {self._jobs[(image_id, f)] for f in findings if (image_id, f) in self._jobs}
            new = [f for f in dict.fromkeys(findings) if (image_id, f) not in self._jobs]
            if new:
                if bounded and len(set(self._jobs.values())) >= self.max_pending:
                    raise HeatmapQueueFull(
                        f"{self.max_pending} heatmap jobs are already waiting; try again in a few seconds"
                    )
                future = self._executor.submit(self._run, image_id, new)
                for finding in new:
                    self._jobs[(image_id, finding)] = future
                self.started += 1
                waiting.add(future)
            return list(waiting)

    def run(self, image_id: str, findings: list[str], timeout: float | None = None) -> None:
        """Submit and wait, never refused: for the service's own threads (the background
        worker, the DICOM node), which are few and wait for their job."""
        for future in self.submit(image_id, findings, bounded=False):
            future.result(timeout)

    def pending(self) -> int:
        with self._lock:
            return len(set(self._jobs.values()))

    def _run(self, image_id: str, findings: list[str]) -> None:
        try:
            self._draw(image_id, findings)
        finally:
            # while a key is here no other job for it can start, so it is always this job's
            with self._lock:
                for finding in findings:
                    self._jobs.pop((image_id, finding), None)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
