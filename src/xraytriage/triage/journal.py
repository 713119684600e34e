"""An interruptible triage run: each scored image is written down as soon as it is done.

``OUTPUT/worklist.images.jsonl`` (the journal) gets one JSON line per scored image, flushed
to the operating system at once (a ``kill -9`` loses nothing written) and fsync'ed every few
seconds (a power cut loses at most those). The worklist files are rewritten from the journal
every ``rewrite_seconds`` and when the run ends or is interrupted (Ctrl-C), so a usable,
partial worklist is always there. ``--resume`` reads the journal back, skips the images it
holds (files that failed are tried again) and appends the rest: an interrupted run resumed
gives exactly the worklist of an uninterrupted one.

The first line records the model file's hash, the labels and the study grouping; resuming
with another model or grouping is refused. Paths are stored exactly (JSON escapes the
surrogates of non-UTF-8 file names), so resumed runs match the files they were given.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraytriage.errors import ConfigError
from xraytriage.io import iter_input_files
from xraytriage.triage.engine import ImageResult, TriageEngine, TriageResult
from xraytriage.triage.worklist import write_worklist

JOURNAL_NAME = "worklist.images.jsonl"
FORMAT = "xraytriage-triage-journal"
FSYNC_SECONDS = 2.0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _record(result: ImageResult) -> dict[str, Any]:
    return {
        "path": result.path,
        "study": result.study,
        "p": None if result.probabilities is None else [float(v) for v in result.probabilities],
        "abnormal": result.abnormal,
        "site": result.site_priority,
        "error": result.error,
        "warnings": list(result.warnings),
        "ood": result.ood_score,
    }


def _result(record: dict[str, Any]) -> ImageResult:
    p = record.get("p")
    return ImageResult(
        path=record["path"],
        study=record["study"],
        probabilities=None if p is None else np.asarray(p, dtype=np.float32),
        abnormal=record.get("abnormal"),
        site_priority=record.get("site"),
        error=record.get("error"),
        warnings=tuple(record.get("warnings") or ()),
        ood_score=record.get("ood"),
    )


@dataclass
class Journal:
    path: Path
    header: dict[str, Any]
    previous: list[ImageResult] = field(default_factory=list)
    """Images scored by the run being resumed (successes only: failures are retried)."""
    previous_extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    """What a routed run wrote next to each of those images (its body part and model), by path."""
    _fh: Any = None
    _synced_at: float = 0.0

    @classmethod
    def open(cls, output_dir: Path, header: dict[str, Any], resume: bool) -> Journal:
        """Start a journal in ``output_dir``; with ``resume``, continue the one there."""
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / JOURNAL_NAME
        journal = cls(path, header)
        if resume and path.is_file():
            journal.previous = journal._read_back()
            journal._fh = open(path, "a", encoding="ascii")  # noqa: SIM115
        else:
            journal._fh = open(path, "w", encoding="ascii")  # noqa: SIM115
            journal._write(header)
            journal.sync()
        return journal

    def _read_back(self) -> list[ImageResult]:
        """Results of the run to resume; a line cut by a kill is dropped (and cut off the file)."""
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(len(complete))
        lines = complete.decode("ascii", "replace").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except ValueError:
            header = {}
        if header.get("format") != FORMAT:
            raise ConfigError(f"{self.path}: not a triage journal; run without --resume to start afresh")
        for key, what in (("model_sha256", "model"), ("labels", "labels"), ("study_from", "--study-from")):
            if header.get(key) != self.header.get(key):
                raise ConfigError(
                    f"{self.path}: cannot resume: the interrupted run used another {what} "
                    f"({header.get(key)!r}); run without --resume to start afresh"
                )
        done: dict[str, ImageResult] = {}
        for line in lines[1:]:
            record = json.loads(line)
            result = _result(record)
            if result.ok:
                done[result.path] = result
                if isinstance(record.get("extra"), dict):
                    self.previous_extra[result.path] = record["extra"]
        return list(done.values())

    def _write(self, record: dict[str, Any]) -> None:
        # ASCII JSON: surrogates of non-UTF-8 names are escaped and read back exactly
        self._fh.write(json.dumps(record, ensure_ascii=True) + "\n")

    def append(self, result: ImageResult, extra: dict[str, Any] | None = None) -> None:
        """Write one scored image; ``extra`` (JSON-ready) is kept with it (routed runs: the body
        part and the model) and read back into :attr:`previous_extra`."""
        self._write({**_record(result), **({"extra": extra} if extra else {})})
        self._fh.flush()
        if time.monotonic() - self._synced_at > FSYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._synced_at = time.monotonic()

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None


def journal_header(model_path: Path, label_names: Sequence[str], study_from: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": 1,
        "model_sha256": file_sha256(model_path),
        "labels": list(label_names),
        "study_from": study_from,
    }


def run_journaled(
    engine: TriageEngine,
    inputs: Iterable[str | Path],
    output_dir: Path,
    header: dict[str, Any],
    resume: bool = False,
    rewrite_seconds: float = 10.0,
) -> TriageResult:
    """Triage ``inputs`` like :meth:`TriageEngine.run`, journaling every image (see the module
    doc). On Ctrl-C the worklist of what is done is written and the result says
    ``extra["interrupted"]``; ``extra["resumed"]`` counts the images taken from the journal."""
    labels = list(engine.checkpoint.label_names)
    journal = Journal.open(output_dir, header, resume)
    results = list(journal.previous)
    done = {r.path for r in results}
    paths = [p for p in (str(p) for p in iter_input_files(inputs)) if p not in done]
    start = time.perf_counter()
    progress = None
    if engine.options.progress:
        from xraytriage.progress import progress_bar

        progress = progress_bar(
            total=len(paths), unit="img", desc="triage", dynamic_ncols=True, file=sys.stderr
        )
    interrupted = False
    rewritten = time.monotonic()
    try:
        for result in engine.iter_results(paths, progress):
            journal.append(result)
            results.append(result)
            if time.monotonic() - rewritten > rewrite_seconds:
                write_worklist(engine.study_rows(results), output_dir, labels)
                rewritten = time.monotonic()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if progress is not None:
            progress.close()
        journal.close()
    return TriageResult(
        rows=engine.study_rows(results),
        label_names=labels,
        images_total=len(results),
        images_ok=sum(1 for r in results if r.ok),
        seconds=time.perf_counter() - start,
        backend=getattr(engine.predictor, "name", ""),
        extra={
            "interrupted": interrupted,
            "resumed": len(journal.previous),
            "inputs": len(paths) + len(done),
        },
    )
