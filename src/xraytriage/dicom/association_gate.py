"""Who gets one of the node's association slots, so that idle or hostile peers cannot lock it out.

pynetdicom counts every open TCP connection against its association limit, including sockets
that never send an A-ASSOCIATE-RQ: ten idle sockets used to make the node refuse every real
C-ECHO ("Local Limit Exceeded"). Here:

* A new connection waits at a *gate* (a thread blocked in ``select``, no CPU) until it has sent
  a whole A-ASSOCIATE-RQ PDU; only then does pynetdicom get it (each pynetdicom association
  costs two polling threads and a copy of every supported presentation context, so idle or
  half-sent connections must not reach it). One that sends anything else, or takes longer than
  the ACSE timeout, is closed.
* A connection is *pending* while it waits at the gate. Beyond ``max_pending`` of them, a new
  one closes the oldest that has had ``GRACE_S`` to ask (a legitimate peer asks within
  milliseconds of connecting, so it always gets through, and a burst of real peers is left
  alone); only at four times ``max_pending`` is a new connection closed at once. Once
  associated, a PDU that stops half-way is cut off by the socket's read timeout (the network
  timeout).
* Only an association that asked, named one of our called AE titles and passed the calling-AE
  allow-list holds one of ``max_associations`` slots; beyond them, a transient reject.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from collections import OrderedDict
from enum import Enum

from pynetdicom.association import Association
from pynetdicom.transport import ThreadedAssociationServer

LOGGER = logging.getLogger(__name__)
LOG_EVERY_S = 60.0
PDU_HEADER = 6
A_ASSOCIATE_RQ = 0x01
MAX_REQUEST_BYTES = 256 * 1024
"""An A-ASSOCIATE-RQ is a few kB (128 presentation contexts at most); more is not a DICOM peer."""
PEEK_INTERVAL_S = 0.05
GRACE_S = 2.0
"""A pending connection younger than this is never closed to make room (real peers ask at once)."""
HARD_CAP_FACTOR = 4
"""New connections are closed at once while this many times ``max_pending`` are pending."""


class Verdict(Enum):
    """The A-ASSOCIATE-RJ (result, source, reason) to send, or ADMITTED."""

    ADMITTED = None
    CALLED_AE_UNKNOWN = (0x01, 0x01, 0x07)
    """rejected-permanent, service-user, called-AE-title-not-recognized"""
    CALLING_AE_NOT_ALLOWED = (0x01, 0x01, 0x03)
    """rejected-permanent, service-user, calling-AE-title-not-recognized"""
    NO_SLOT = (0x02, 0x03, 0x02)
    """rejected-transient, service-provider (presentation), local-limit-exceeded: retry later"""


def raw_socket(assoc: Association) -> socket.socket | None:
    transport = getattr(assoc.dul, "socket", None)
    return getattr(transport, "socket", None)


def _ended(assoc: Association) -> bool:
    """The association's thread ran and finished (an unstarted one is not ended)."""
    return assoc.ident is not None and not assoc.is_alive()


def _closed(sock: socket.socket) -> bool:
    return sock.fileno() == -1


def _disconnect(sock: socket.socket) -> None:
    """Shut a connection down: whoever waits on it (the gate, a reader) sees the end and stops."""
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class Admission:
    """Bookkeeping of pending connections (by socket) and slot holders (thread-safe)."""

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
        self._pending: OrderedDict[socket.socket, float] = OrderedDict()
        self._holders: set[Association] = set()
        self.evicted = 0
        self._logged_at = -LOG_EVERY_S

    def connected(self, sock: socket.socket) -> bool:
        """A new TCP connection, pending at the gate. Over ``max_pending``, the oldest pending
        ones that had ``GRACE_S`` to ask are closed (a burst of real peers, which ask at once,
        is left alone); False (close this one) only at ``HARD_CAP_FACTOR * max_pending``."""
        now = time.monotonic()
        with self._lock:
            self._prune()
            evicted = []
            while len(self._pending) >= self.max_pending:
                oldest, since = next(iter(self._pending.items()))
                if now - since < GRACE_S:
                    break
                evicted.append(oldest)
                del self._pending[oldest]
            admitted = len(self._pending) < HARD_CAP_FACTOR * self.max_pending
            if admitted:
                self._pending[sock] = now
        for old in evicted:
            _disconnect(old)
        if evicted or not admitted:
            self._log_eviction(len(evicted) + (not admitted))
        return admitted

    def left_gate(self, sock: socket.socket) -> None:
        """The connection sent its A-ASSOCIATE-RQ (or gave up): no longer pending."""
        with self._lock:
            self._pending.pop(sock, None)

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
            self._holders.add(assoc)
        return Verdict.ADMITTED

    def closed(self, assoc: Association) -> None:
        with self._lock:
            self._holders.discard(assoc)
        self._prune_locked()

    def disconnect_pending(self) -> None:
        """Close every pending connection (the node is stopping)."""
        with self._lock:
            pending, self._pending = list(self._pending), OrderedDict()
        for sock in pending:
            _disconnect(sock)

    @property
    def counts(self) -> tuple[int, int]:
        """(slot holders, pending connections) now."""
        with self._lock:
            self._prune()
            return len(self._holders), len(self._pending)

    def _prune_locked(self) -> None:
        with self._lock:
            self._prune()

    def _prune(self) -> None:
        """Forget ended associations and closed sockets (a missed close event must not leak)."""
        self._holders = {a for a in self._holders if not _ended(a)}
        for sock in [s for s in self._pending if _closed(s)]:
            del self._pending[sock]

    def _log_eviction(self, count: int) -> None:
        """One warning a minute at most: a flood of connections must not flood the log too."""
        with self._lock:
            self.evicted += count
            now = time.monotonic()
            if now - self._logged_at < LOG_EVERY_S:
                return
            self._logged_at, total = now, self.evicted
        LOGGER.warning(
            "DICOM: more than %d connections have not asked for an association; closed the "
            "oldest or the newest (%d so far)",
            self.max_pending,
            total,
        )


class GatedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's server with the gate in front: set ``admission``, ``gate_timeout`` (the ACSE
    timeout) and ``read_timeout`` (the network timeout) before serving."""

    admission: Admission
    gate_timeout: float = 10.0
    read_timeout: float | None = 30.0
    request_queue_size = 64  # listen backlog (socketserver's 5 drops SYNs when 20 peers connect at once)

    def process_request(self, request, client_address) -> None:  # the listening thread
        if not self.admission.connected(request):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:  # one thread per connection
        asked = _sends_association_request(request, self.gate_timeout)
        self.admission.left_gate(request)
        if not asked:
            self.shutdown_request(request)
            return
        request.settimeout(self.read_timeout)  # a PDU that stops half-way cannot block for ever
        super().process_request_thread(request, client_address)

    def server_close(self) -> None:
        self.admission.disconnect_pending()  # the gate threads return at once
        super().server_close()

    def shutdown(self) -> None:
        # started with make_server (to choose this class), so it is not in the AE's server list,
        # which pynetdicom's shutdown removes it from last
        with contextlib.suppress(ValueError):
            super().shutdown()


HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)
"""The peer closed (or we shut the socket: evicted, stopping). POLLRDHUP (Linux) also reports a
peer that closes after half a PDU, whose buffered bytes keep the socket readable."""


def _sends_association_request(sock: socket.socket, timeout: float) -> bool:
    """Wait until the peer has sent a whole A-ASSOCIATE-RQ PDU (peeked, left in the socket for
    pynetdicom to read); False when it sends something else, too much, closes, or takes longer
    than ``timeout``. Blocked in ``poll``, or sleeping between peeks at a half-sent PDU: no CPU."""
    deadline = time.monotonic() + timeout
    need = PDU_HEADER
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | HANGUP)
        while (left := deadline - time.monotonic()) > 0:
            events = poller.poll(left * 1000)
            if not events:
                return False
            data = sock.recv(need, socket.MSG_PEEK) if events[0][1] & select.POLLIN else b""
            if need == PDU_HEADER and len(data) >= PDU_HEADER:
                pdu_type, _, length = struct.unpack(">BBL", data[:PDU_HEADER])
                if pdu_type != A_ASSOCIATE_RQ or length > MAX_REQUEST_BYTES:
                    return False
                need += length
                data = sock.recv(need, socket.MSG_PEEK)
            if len(data) >= need:
                return True
            if events[0][1] & HANGUP or not data:
                return False
            time.sleep(PEEK_INTERVAL_S)  # half a PDU so far: wait for the rest without spinning
    except (OSError, ValueError):  # closed under us
        return False
    return False
