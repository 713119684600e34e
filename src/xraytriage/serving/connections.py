"""Slow clients: uvicorn's HTTP/1.1 protocol with a header timeout and a body idle timeout.

uvicorn closes a kept-alive connection that sends nothing (``timeout_keep_alive``) but never
one that sends its request headers a byte at a time, or starts a body and then goes quiet
(slowloris): each such connection holds a socket and a file descriptor for as long as the
client likes. :class:`TimedH11Protocol` closes

- a connection whose request line and headers are not complete ``header_timeout`` seconds
  after it opened (or after the previous answer on a kept-alive connection), with
  ``408 Request Timeout``;
- a request whose body sends nothing for ``idle_timeout`` seconds while the server is
  waiting for it (not while the server itself has paused reading).
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0


def timed_protocol(header_timeout: float = HEADER_TIMEOUT_S, idle_timeout: float = IDLE_TIMEOUT_S) -> type:
    """A :class:`TimedH11Protocol` class with these limits (uvicorn takes a class for ``http``)."""
    return type(
        "TimedH11Protocol",
        (TimedH11Protocol,),
        {"header_timeout": float(header_timeout), "idle_timeout": float(idle_timeout)},
    )


class TimedH11Protocol(H11Protocol):
    """See the module doc; ``header_timeout`` and ``idle_timeout`` are class attributes."""

    header_timeout: float = HEADER_TIMEOUT_S
    idle_timeout: float = IDLE_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None
    _idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in
            self._cancel("_header_timer")
        if self.conn.their_state is h11.SEND_BODY:
            self._arm_idle_timer()
        else:
            self._cancel("_idle_timer")

    def on_response_complete(self) -> None:
        self._cancel("_idle_timer")
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets the same limit

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel("_header_timer")
        self._cancel("_idle_timer")
        super().connection_lost(exc)

    def _cancel(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _arm_header_timer(self) -> None:
        self._cancel("_header_timer")
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _arm_idle_timer(self) -> None:
        self._cancel("_idle_timer")
        self._idle_timer = self.loop.call_later(self.idle_timeout, self._body_idle)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:  # nothing of an answer sent yet: say why
            self._write_408(f"the request headers did not arrive within {self.header_timeout:g} s")
        self.transport.close()

    def _body_idle(self) -> None:
        self._idle_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        if self.flow is not None and self.flow.read_paused:  # the server is busy, not the client
            self._arm_idle_timer()
            return
        self.logger.info("closing a request whose body sent nothing for %g s", self.idle_timeout)
        if self.cycle is not None:
            self.cycle.keep_alive = False
        self.transport.close()

    def _write_408(self, message: str) -> None:
        body = json.dumps({"error": message, "status": 408}).encode()
        head = (
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode()
        self.transport.write(head + body)
