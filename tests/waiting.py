"""Waiting in tests: poll a condition until a deadline, never sleep a fixed time and hope.

``wait_until(predicate, timeout)`` returns the first truthy value of ``predicate()`` (so the
thing waited for can be used at once) or fails with what was awaited. A fixed ``time.sleep``
is either too short on a busy machine (a flaky test) or too long on an idle one (a slow test).
The only sleeps left in tests/ pace a client on purpose (a slow sender, an obeyed Retry-After).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.05,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate()`` until it returns something truthy and return that; AssertionError
    after ``timeout`` seconds, naming ``what`` (and ``detail()``, e.g. a log tail). The predicate
    may raise to stop the wait early (a process that died)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f":\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)
