"""The audit trail: who viewed, exported, marked or received which study, and when.

What a hospital's privacy officer asks first. Each entry records the actor (``token`` for the
bearer token, ``session:<8 hex>`` for a signed-in browser, a hash of the session's nonce
that never reveals the cookie, ``open`` without a token, ``dicom:<AE title>`` for a sending
modality, ``retention`` for the clean-up), the client's address, the action, the study and
a short detail (filters, a status, a count): never image data, never a token.

Entries are appended to the ``audit`` table (migration 0003, whose triggers refuse UPDATE
and DELETE), kept when retention removes the studies, and read through the admin API
(``GET /api/v1/audit``, ``/api/v1/audit.csv``). A page that polls the API would add an entry
every few seconds: the same actor, address, action and study within ``REPEAT_S`` count once.

A request never waits for its entry: entries are queued and a writer thread appends them in
batches (within ``FLUSH_S``); while the database is away they wait in memory (at most
``MAX_WAITING``, the oldest dropped with a warning beyond that) and are written when it is
back. Reading the trail (:meth:`AuditLog.flush` first) and stopping the service write what
waits.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from typing import Any

from starlette.requests import Request

from xraytriage.serving.auth import authenticated_by, client_address, session_cookie
from xraytriage.serving.repository import Repository

log = logging.getLogger(__name__)
REPEAT_S = 60.0
FLUSH_S = 0.5
MAX_WAITING = 100_000
ACTIONS = (
    "view",  # a study (page or API), one of its images or heatmaps
    "view-worklist",
    "export",  # worklist.csv
    "mark",  # reader status changed
    "upload",  # images received over HTTP
    "receive",  # images received over DICOM
    "send",  # results sent to the PACS
    "audit",  # the audit trail itself was read or exported
    "delete",  # retention removed the study
)


def actor_of(request: Request) -> str:
    """Who made the request, without any secret (see the module doc)."""
    how = authenticated_by(request.scope)
    if how == "bearer":
        return "token"
    if how == "session":
        nonce = (session_cookie(request.scope) or "..").split(".")[1]
        return "session:" + hashlib.sha256(nonce.encode()).hexdigest()[:8]
    return "open"


class AuditLog:
    """Appends entries through the repository (see the module doc)."""

    def __init__(self, repo: Repository, repeat_s: float = REPEAT_S) -> None:
        self.repo = repo
        self.repeat_s = repeat_s
        self._recent: OrderedDict[tuple, float] = OrderedDict()
        self._lock = threading.Lock()
        self._waiting: deque[dict[str, Any]] = deque()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ensure_writer(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._loop, name="xraytriage-audit", daemon=True)
                    self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            if not self.flush():
                self._stop.wait(2.0)  # the database is away: try again in a moment

    def flush(self) -> bool:
        """Write every waiting entry now; False when the database would not take them (they
        stay waiting)."""
        with self._write_lock:
            with self._lock:
                rows = list(self._waiting)
            if not rows:
                return True
            try:
                self.repo.add_audit(rows)
            except Exception as exc:
                log.warning("%d audit entries wait for the database (%s)", len(rows), type(exc).__name__)
                return False
            with self._lock:
                for _ in rows:
                    self._waiting.popleft()
            return True

    def stop(self) -> None:
        """Write what waits (called when the service stops)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()

    def _repeated(self, key: tuple, now: float) -> bool:
        with self._lock:
            while self._recent and next(iter(self._recent.values())) < now - self.repeat_s:
                self._recent.popitem(last=False)
            if key in self._recent:
                return True
            self._recent[key] = now
            return False

    def record(
        self,
        action: str,
        *,
        actor: str,
        address: str = "",
        study_ids: list[str | None] | tuple = (None,),
        status: int = 0,
        detail: str = "",
        once: bool = False,
    ) -> None:
        """One entry per study in ``study_ids``; ``once``: skip repeats (page polling)."""
        now = time.time()
        rows: list[dict[str, Any]] = []
        for study_id in study_ids:
            if once and self._repeated((actor, address, action, study_id, detail), now):
                continue
            rows.append(
                {
                    "at": now,
                    "actor": actor[:64],
                    "address": address[:64],
                    "action": action,
                    "study_id": study_id,
                    "status": int(status),
                    "detail": detail[:500],
                }
            )
        if not rows:
            return
        with self._lock:
            self._waiting.extend(rows)
            dropped = len(self._waiting) - MAX_WAITING
            for _ in range(max(dropped, 0)):
                self._waiting.popleft()
        if dropped > 0:
            log.warning("audit: %d entries dropped (the database has been away too long)", dropped)
        self._ensure_writer()
        self._wake.set()

    def request(
        self,
        request: Request,
        action: str,
        study_ids: list[str | None] | tuple = (None,),
        status: int = 200,
        detail: str = "",
        once: bool = False,
    ) -> None:
        """An entry for an HTTP request (actor and address from it)."""
        self.record(
            action,
            actor=actor_of(request),
            address=client_address(request.scope),
            study_ids=study_ids,
            status=status,
            detail=detail,
            once=once,
        )


__all__ = ["ACTIONS", "AuditLog", "actor_of"]
