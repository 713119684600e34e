"""Database outages: a restarted PostgreSQL, a SQLite file another process holds locked.

The engine checks each pooled connection before use (``pool_pre_ping``), so a connection the
database dropped is replaced instead of failing the next query. What remains are calls made
*while* the database is away. :class:`DatabaseMonitor` is the service's view of that:

- :func:`is_database_outage` tells an outage (connection refused or dropped, server shutting
  down, database locked) from a bug (a constraint, a syntax error), which stays a 500;
- :meth:`DatabaseMonitor.retry` runs a worker's database call again with back-off while the
  outage lasts (up to ``retry_seconds``), so a 0.35 s restart costs the worker nothing;
- past that the worker sets its claimed work aside and pauses
  (:meth:`~DatabaseMonitor.healthy` probes with ``SELECT 1`` at most every few seconds);
  on recovery the work is put back in the queue, never left ``processing``;
- the API answers 503 with ``Retry-After`` and ``/healthz`` says ``degraded`` with the reason
  (:meth:`~DatabaseMonitor.status`) until a call succeeds again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from xraytriage.serving.db import Database, is_database_outage, outage_reason
from xraytriage.serving.storage import is_storage_error

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_AFTER_S = 5


class DatabaseMonitor:
    """Whether the database answers, why not, and retries with back-off (see the module doc)."""

    def __init__(self, db: Database, retry_seconds: float = 30.0, probe_every: float = 2.0) -> None:
        self.db = db
        self.retry_seconds = retry_seconds
        self.probe_every = probe_every
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._since: float | None = None
        self._last_probe = 0.0

    def note(self, exc: BaseException) -> None:
        """An outage was seen (by a request or a worker)."""
        reason = outage_reason(exc)
        with self._lock:
            if self._reason is None:
                self._since = time.time()
                log.warning("the database is unavailable: %s", reason)
            self._reason = reason

    def recovered(self) -> None:
        with self._lock:
            if self._reason is not None:
                log.info("the database is back after %.1f s", time.time() - (self._since or time.time()))
            self._reason, self._since = None, None

    @property
    def down(self) -> bool:
        return self._reason is not None

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ok": self._reason is None,
                "reason": self._reason,
                "since": self._since,
                "dialect": self.db.engine.dialect.name,
            }

    def probe(self) -> bool:
        """:meth:`Database.probe`; True (and recovered) when the database answers."""
        try:
            self.db.probe()
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            self.note(exc)
            return False
        self.recovered()
        return True

    def healthy(self) -> bool:
        """For the worker's loop: True when no outage is known; while one is, a probe at most
        every ``probe_every`` seconds."""
        if not self.down:
            return True
        now = time.monotonic()
        if now - self._last_probe < self.probe_every:
            return False
        self._last_probe = now
        return self.probe()

    def retry(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``call(*args, **kwargs)``, again with back-off (0.1 s doubling to 2 s) while it
        fails on an outage, for up to ``retry_seconds``; then the last error is raised."""
        deadline = time.monotonic() + self.retry_seconds
        wait = 0.1
        while True:
            try:
                result = call(*args, **kwargs)
            except Exception as exc:
                if not is_database_outage(exc) or is_storage_error(exc):  # a full disk: the worker's
                    raise  # storage pause handles it
                self.note(exc)
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
                continue
            if self.down:
                self.recovered()
            return result


class RetryingRepository:
    """The repository as the worker and its jobs see it: every method call goes through
    :meth:`DatabaseMonitor.retry` (each method is one transaction, rolled back on failure,
    so running it again is safe)."""

    def __init__(self, repo: Any, monitor: DatabaseMonitor) -> None:
        self._repo = repo
        self._monitor = monitor

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._repo, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def retried(*args: Any, **kwargs: Any) -> Any:
            return self._monitor.retry(attribute, *args, **kwargs)

        return retried


__all__ = ["RETRY_AFTER_S", "DatabaseMonitor", "RetryingRepository", "is_database_outage", "outage_reason"]
