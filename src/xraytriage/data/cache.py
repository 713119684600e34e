"""The preprocessed-image cache: decode + resize once, then training only copies uint8 rows.

Layout under ``directory/<contract.cache_key()>/``::

    pixels.u8     raw uint8 rows of size x size (a numpy memmap; one row per cached image)
    index.csv     path, row, status (ok|error), error, file_size, mtime_ns
    contract.json the stage-1 preprocessing contract the rows were made with

A different contract has a different key, so it never reads rows made another way. Adding
paths reuses every row already there (a file whose size or mtime changed is decoded again);
files that fail to decode are recorded with their error and skipped, never stopping the build.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xraytriage.errors import ImageReadError
from xraytriage.io import read_radiograph
from xraytriage.preprocess import PreprocessContract

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["path", "row", "status", "error", "file_size", "mtime_ns"]


@dataclass
class CacheBuildReport:
    """What one :meth:`ImageCache.build` did."""

    requested: int = 0
    reused: int = 0
    added: int = 0
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return (
            f"{self.requested} images: {self.reused} already cached, {self.added} added, {self.failed} failed"
        )


def _key(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        return -1, -1


def decode_to_uint8(path: str, contract: PreprocessContract) -> np.ndarray:
    """Stage 1 of the contract on one file: exactly what a cache row holds."""
    return contract.to_uint8(read_radiograph(path).pixels)


def _decode_job(job: tuple[str, dict[str, Any]]) -> tuple[str, np.ndarray | None, str]:
    path, contract_dict = job
    try:
        return path, decode_to_uint8(path, PreprocessContract.from_dict(contract_dict)), ""
    except ImageReadError as exc:
        return path, None, str(exc)
    except Exception as exc:  # one bad file never stops the build
        return path, None, f"{path}: {type(exc).__name__}: {exc}"


class ImageCache:
    """Memory-mapped uint8 store of preprocessed images, keyed by the preprocessing contract.

    Satisfies :class:`xraytriage.data.torch_dataset.UInt8Source`: ``lookup(paths)`` gives the
    row of each path (-1 when absent or failed) and ``array`` is the ``(rows, size, size)`` map.
    """

    def __init__(self, directory: str | Path, contract: PreprocessContract) -> None:
        self.root = Path(directory)
        self.contract = contract
        self.size = int(contract.size)
        self.directory = self.root / contract.cache_key()
        self._array: np.memmap | None = None
        self._load_index()

    # --- files -----------------------------------------------------------------------------
    @property
    def pixels_file(self) -> Path:
        return self.directory / "pixels.u8"

    @property
    def index_file(self) -> Path:
        return self.directory / "index.csv"

    def _load_index(self) -> None:
        if self.index_file.is_file():
            index = pd.read_csv(self.index_file, keep_default_na=False, dtype={"path": str, "error": str})
            index["row"] = index["row"].astype(np.int64)
        else:
            index = pd.DataFrame(columns=INDEX_COLUMNS)
        self._index = index
        self._rows = {p: int(r) for p, r in zip(index["path"], index["row"], strict=True)}
        ok = index["row"].astype(np.int64) >= 0 if len(index) else pd.Series([], dtype=bool)
        self.n_rows = int(index.loc[ok, "row"].max()) + 1 if ok.any() else 0

    def _write_index(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.index_file.with_suffix(".csv.tmp")
        self._index.to_csv(tmp, index=False)
        os.replace(tmp, self.index_file)
        contract_file = self.directory / "contract.json"
        if not contract_file.is_file():
            contract_file.write_text(json.dumps(self.contract.to_dict(), indent=2, sort_keys=True))

    # --- UInt8Source -------------------------------------------------------------------------
    @property
    def array(self) -> np.ndarray:
        """``(rows, size, size)`` uint8, memory-mapped copy-on-write: the file is never
        changed through it, and torch can wrap rows without a non-writable-array warning."""
        if self.n_rows == 0:
            return np.zeros((0, self.size, self.size), dtype=np.uint8)
        if self._array is None or self._array.shape[0] != self.n_rows:
            self._array = np.memmap(
                self.pixels_file, dtype=np.uint8, mode="c", shape=(self.n_rows, self.size, self.size)
            )
        return self._array

    def lookup(self, paths: Iterable[str | os.PathLike]) -> np.ndarray:
        """Row per path; -1 for a path not cached (never built, or failed to decode)."""
        return np.fromiter((self._rows.get(_key(p), -1) for p in paths), dtype=np.int64)

    def __len__(self) -> int:
        return int((self._index["row"].astype(np.int64) >= 0).sum()) if len(self._index) else 0

    def __contains__(self, path: str | os.PathLike) -> bool:
        return self._rows.get(_key(path), -1) >= 0

    def get(self, path: str | os.PathLike) -> np.ndarray:
        row = self._rows.get(_key(path), -1)
        if row < 0:
            raise KeyError(f"{path}: not in the cache {self.directory}")
        return np.asarray(self.array[row])

    @property
    def errors(self) -> dict[str, str]:
        """Path -> error for every file that failed to decode."""
        bad = self._index[self._index["status"] == "error"] if len(self._index) else self._index
        return dict(zip(bad["path"], bad["error"], strict=True))

    @property
    def paths(self) -> list[str]:
        """Cached paths in row order."""
        ok = self._index[self._index["row"].astype(np.int64) >= 0]
        return ok.sort_values("row")["path"].tolist()

    # --- pickling for DataLoader workers: reopen the map, never copy it ----------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None
        return state

    # --- building ------------------------------------------------------------------------------
    def _pending(self, paths: Sequence[str]) -> tuple[list[str], int]:
        """Paths that need decoding (new, changed on disk, or failed before) and the count reused."""
        index = self._index
        known = {
            p: (int(size), int(mtime), status)
            for p, size, mtime, status in zip(
                index["path"], index["file_size"], index["mtime_ns"], index["status"], strict=True
            )
        }
        todo, reused = [], 0
        for path in paths:
            entry = known.get(path)
            if entry is not None and entry[2] == "ok" and entry[:2] == _stat(path):
                reused += 1
                continue
            todo.append(path)
        return todo, reused

    def _results(self, todo: list[str], workers: int) -> Iterator[tuple[str, np.ndarray | None, str]]:
        jobs = [(p, self.contract.to_dict()) for p in todo]
        if workers <= 1 or len(todo) < 8:
            yield from map(_decode_job, jobs)
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            yield from pool.map(_decode_job, jobs, chunksize=max(1, min(64, len(jobs) // (workers * 8))))

    def build(
        self, paths: Iterable[str | os.PathLike], workers: int | None = None, progress: bool = True
    ) -> CacheBuildReport:
        """Decode and store every path not cached yet; returns what happened.

        ``workers``: decoding processes (default: up to 2, the CPU count permitting).
        """
        unique = list(dict.fromkeys(_key(p) for p in paths))
        report = CacheBuildReport(requested=len(unique))
        todo, report.reused = self._pending(unique)
        if not todo:
            self._write_index()
            return report
        workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
        self.directory.mkdir(parents=True, exist_ok=True)
        row_bytes = self.size * self.size
        self._array = None
        existing_rows = {p: r for p, r in self._rows.items() if r >= 0}
        next_row = self.n_rows
        capacity = next_row + len(todo)
        with open(self.pixels_file, "ab"):
            pass
        os.truncate(self.pixels_file, capacity * row_bytes)
        store = np.memmap(self.pixels_file, dtype=np.uint8, mode="r+", shape=(capacity, self.size, self.size))
        updates: dict[str, dict[str, Any]] = {}
        try:
            from xraytriage.progress import progress_bar

            bar = progress_bar(
                total=len(todo), desc=f"caching {self.size}px", unit="img", disable=not progress
            )
            for path, pixels, error in self._results(todo, workers):
                size, mtime = _stat(path)
                if pixels is None:
                    updates[path] = {"row": -1, "status": "error", "error": error}
                    report.failed += 1
                    report.errors[path] = error
                else:
                    row = existing_rows.get(path, -1)
                    if row < 0:
                        row, next_row = next_row, next_row + 1
                    store[row] = pixels
                    updates[path] = {"row": row, "status": "ok", "error": ""}
                    report.added += 1
                updates[path].update(path=path, file_size=size, mtime_ns=mtime)
                bar.update(1)
            bar.close()
        finally:
            store.flush()
            del store
            os.truncate(self.pixels_file, next_row * row_bytes)
            self._merge(updates)
            self._write_index()
        if report.failed:
            log.warning(
                "cache: %d file(s) failed to decode, e.g. %s",
                report.failed,
                next(iter(report.errors.values())),
            )
        return report

    def _merge(self, updates: dict[str, dict[str, Any]]) -> None:
        if not updates:
            return
        new = pd.DataFrame(list(updates.values()), columns=INDEX_COLUMNS)
        keep = self._index[~self._index["path"].isin(updates)] if len(self._index) else self._index
        self._index = pd.concat([keep, new], ignore_index=True) if len(keep) else new
        self._index["row"] = self._index["row"].astype(np.int64)
        self._rows = {p: int(r) for p, r in zip(self._index["path"], self._index["row"], strict=True)}
        ok = self._index["row"] >= 0
        self.n_rows = int(self._index.loc[ok, "row"].max()) + 1 if ok.any() else 0
        self._array = None

    def __repr__(self) -> str:
        return f"ImageCache({self.directory}, {len(self)} images of {self.size}px, {len(self.errors)} errors)"
