"""Who gets one of the node's association slots, so that idle or hostile peers cannot lock it out.

pynetdicom counts every open TCP connection against its association limit, including sockets
that never send an A-ASSOCIATE-RQ: ten idle sockets used to make the node refuse every real
C-ECHO ("Local Limit Exceeded"). Here only an association that has *asked* (A-ASSOCIATE-RQ
received), named our AE title and passed the calling-AE allow-list holds a slot. Connections
that have not (yet) asked are *pending*: at most ``max_pending`` of them are kept, the oldest is
disconnected when a new one arrives, and each is dropped after the ACSE timeout anyway, so a
legitimate peer, which asks within milliseconds of connecting, always gets through.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import OrderedDict
from enum import Enum

from pynetdicom.association import Association

LOGGER = logging.getLogger(__name__)
LOG_EVERY_S = 60.0


class Verdict(Enum):
    """The A-ASSOCIATE-RJ (result, source, reason) to send, or ADMITTED."""

    ADMITTED = None
    CALLED_AE_UNKNOWN = (0x01, 0x01, 0x07)
    """rejected-permanent, service-user, called-AE-title-not-recognized"""
    CALLING_AE_NOT_ALLOWED = (0x01, 0x01, 0x03)
    """rejected-permanent, service-user, calling-AE-title-not-recognized"""
    NO_SLOT = (0x02, 0x03, 0x02)
    """rejected-transient, service-provider (presentation), local-limit-exceeded: retry later"""


def _raw_socket(assoc: Association) -> socket.socket | None:
    transport = getattr(assoc.dul, "socket", None)
    return getattr(transport, "socket", None)


def _ended(assoc: Association) -> bool:
    """The association's thread ran and finished (an unstarted one is not ended)."""
    return assoc.ident is not None and not assoc.is_alive()


class Admission:
    """Bookkeeping of pending connections and slot holders (thread-safe)."""

    def __init__(
        self,
        called_ae_titles: frozenset[str],
        allowed_calling_aes: frozenset[str] | None,
        max_associations: int,
        max_pending: int,
    ) -> None:
        self.called_ae_titles = called_ae_titles
        self.allowed_calling_aes = allowed_calling_aes
        self.max_associations = max_associations
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: OrderedDict[Association, float] = OrderedDict()
        self._holders: set[Association] = set()
        self.evicted = 0
        self._logged_at = -LOG_EVERY_S

    # --- what the SCP's event handlers call -------------------------------------------------
    def connected(self, assoc: Association, timeout: float | None) -> None:
        """A new TCP connection: give its socket a read timeout (a half-sent PDU cannot block a
        thread for ever) and make room among the pending connections by dropping the oldest."""
        sock = _raw_socket(assoc)
        if sock is not None and timeout is not None:
            sock.settimeout(timeout)
        with self._lock:
            self._prune()
            evicted = []
            while len(self._pending) >= self.max_pending:
                evicted.append(self._pending.popitem(last=False)[0])
            self._pending[assoc] = time.monotonic()
        for old in evicted:
            _disconnect(old)
        if evicted:
            self._log_eviction(len(evicted))

    def decide(self, assoc: Association, calling_ae: str, called_ae: str) -> Verdict:
        """After the A-ASSOCIATE-RQ: check the AE titles first, then take a slot if one is free."""
        if called_ae not in self.called_ae_titles:
            return Verdict.CALLED_AE_UNKNOWN
        if self.allowed_calling_aes is not None and calling_ae not in self.allowed_calling_aes:
            return Verdict.CALLING_AE_NOT_ALLOWED
        with self._lock:
            self._prune()
            if len(self._holders) >= self.max_associations:
                return Verdict.NO_SLOT
            self._pending.pop(assoc, None)
            self._holders.add(assoc)
        return Verdict.ADMITTED

    def closed(self, assoc: Association) -> None:
        with self._lock:
            self._pending.pop(assoc, None)
            self._holders.discard(assoc)

    def _log_eviction(self, count: int) -> None:
        """One warning a minute at most: a flood of connections must not flood the log too."""
        with self._lock:
            self.evicted += count
            now = time.monotonic()
            if now - self._logged_at < LOG_EVERY_S:
                return
            self._logged_at, total = now, self.evicted
        LOGGER.warning(
            "DICOM: more than %d connections have not asked for an association; dropped the "
            "oldest (%d dropped so far)",
            self.max_pending,
            total,
        )

    # --- for tests and logs ----------------------------------------------------------------
    @property
    def counts(self) -> tuple[int, int]:
        """(slot holders, pending connections) now."""
        with self._lock:
            self._prune()
            return len(self._holders), len(self._pending)

    def _prune(self) -> None:
        """Forget associations whose thread has ended (a missed close event must not leak)."""
        self._holders = {a for a in self._holders if not _ended(a)}
        for assoc in [a for a in self._pending if _ended(a)]:
            del self._pending[assoc]


def _disconnect(assoc: Association) -> None:
    """Close a pending connection's socket: its reader sees the end of the stream and stops."""
    sock = _raw_socket(assoc)
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed by the peer
        sock.shutdown(socket.SHUT_RDWR)
