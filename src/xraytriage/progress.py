"""Progress bars that suit where the output goes: ``progress_bar(...)``.

On a terminal it is a tqdm bar. Piped to a file (CI, ``nohup``, a log) a redrawn bar writes
thousands of carriage-return frames per epoch; there a bar kept after it ends (``leave=True``)
writes one plain line when it closes, and a transient bar (``leave=False``, e.g. the batches of
one training epoch, whose epoch the trainer logs anyway) writes nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes and closed streams)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class LineProgress:
    """The tqdm methods the package uses, writing at most one line, at ``close``."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | float | None = None,
        desc: str = "",
        unit: str = "it",
        leave: bool = True,
        file: IO[str] | None = None,
        initial: int | float = 0,
        **_: Any,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.leave = total, desc, unit, leave
        self.file = file if file is not None else sys.stderr
        self.n = initial
        self.postfix = ""
        self._start = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            return
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int | float = 1) -> None:
        self.n += n

    def set_postfix(
        self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: the one line comes at ``close``."""

    def write(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.leave:
            self.file.write(self.line() + "\n")
            self.file.flush()

    def line(self) -> str:
        seconds = time.perf_counter() - self._start
        done = f"{self.n:g}" if self.total is None else f"{self.n:g}/{self.total:g}"
        rate = f", {self.n / seconds:.1f} {self.unit}/s" if seconds > 0 and self.n else ""
        extra = f", {self.postfix}" if self.postfix else ""
        head = f"{self.desc}: " if self.desc else ""
        return f"{head}{done} {self.unit} in {seconds:.1f} s{rate}{extra}"


def progress_bar(iterable: Iterable[Any] | None = None, *, disable: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar on a terminal, else a :class:`LineProgress` (same calls, one line or none);
    ``disable`` turns both off. ``file`` defaults to stderr, as tqdm's does."""
    from tqdm import tqdm

    if disable:
        return tqdm(iterable, disable=True, **kwargs)
    if is_terminal(kwargs.get("file") or sys.stderr):
        return tqdm(iterable, **kwargs)
    return LineProgress(iterable, **kwargs)
