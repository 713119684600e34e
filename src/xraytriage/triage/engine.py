"""The streaming triage pipeline.

Worker processes read and preprocess files (stage 1 of the preprocessing contract: decode,
intensity, resize to uint8) while the main process runs the model on batches. At most
``prefetch`` images are decoded or being decoded at any time, so memory stays flat however
many files there are; only each image's probabilities are kept. A file that cannot be read
becomes an error result; a decoder process that crashes is replaced and the batch goes on.

This module imports no deep-learning library: worker processes stay light, and the
predictor (ONNX Runtime or PyTorch) is handed in.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraytriage.errors import ConfigError, ImageReadError
from xraytriage.io import iter_input_files, read_radiograph
from xraytriage.models.ood import ood_warning
from xraytriage.models.predictor import Predictor
from xraytriage.preprocess import PreprocessContract
from xraytriage.scope import age_warning, low_resolution_warning, scope_problem
from xraytriage.triage.aggregate import aggregate_probabilities, check_aggregation
from xraytriage.triage.grouping import check_study_mode, study_key
from xraytriage.triage.priority import PriorityRules, SitePriorities, UrgencyWeights, dicom_site_priority
from xraytriage.triage.reasons import critical_findings, flag_reason, study_tier
from xraytriage.triage.worklist import WorklistRow, format_findings, sort_worklist

log = logging.getLogger(__name__)

KEPT_META = (
    "study_uid",
    "priority",
    "modality",
    "patient_id",
    "accession",
    "view_position",
    "body_part",
    "width",
    "height",
    "patient_age",
)


@dataclass
class Prepared:
    """A worker's answer for one file: the uint8 image, or the error that names the file."""

    path: str
    image: np.ndarray | None
    meta: dict[str, Any]
    error: str | None = None


def prepare_image(
    path: str, contract: PreprocessContract, max_pixels: int | None = None, max_side: int | None = None
) -> Prepared:
    """Read and apply stage 1 of the contract; runs in a worker process. Never raises.
    ``max_pixels``/``max_side``: the reader's limits (the service's pixel cap, reduced decode)."""
    limits = {} if max_pixels is None else {"max_pixels": max_pixels}
    try:
        radiograph = read_radiograph(path, max_side=max_side, **limits)
        image = contract.to_uint8(radiograph.pixels)
    except ImageReadError as exc:
        return Prepared(path, None, {}, str(exc))
    except Exception as exc:  # a decoder bug must not stop the batch either
        return Prepared(
            path, None, {}, f"{path}: unexpected error while reading: {type(exc).__name__}: {exc}"
        )
    meta = {k: radiograph.meta[k] for k in KEPT_META if radiograph.meta.get(k)}
    return Prepared(path, image, meta)


@dataclass
class TriageOptions:
    batch_size: int = 16
    workers: int = 1
    """Decoder processes; 0 decodes in the main process (simplest, for tiny jobs and debugging)."""
    study_from: str = "file"
    aggregate: str = "max"
    urgency: UrgencyWeights | None = None
    site: SitePriorities | None = None
    progress: bool = True
    prefetch: int | None = None
    """Most images decoded or being decoded at once (default: 2 batches, at least 4 per worker)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        check_study_mode(self.study_from)
        check_aggregation(self.aggregate)

    @property
    def max_in_flight(self) -> int:
        return self.prefetch or max(2 * self.batch_size, 4 * self.workers)


@dataclass
class ImageResult:
    """One image after the model: calibrated probabilities, or the error. No pixels."""

    path: str
    study: str
    probabilities: np.ndarray | None = None
    abnormal: float | None = None
    error: str | None = None
    site_priority: float | None = None
    warnings: tuple[str, ...] = ()
    """Read, but with a caveat the reader should see (e.g. low resolution)."""
    ood_score: float | None = None
    """How unlike the training images (``models.ood``; >= 1 warned); None without a reference."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class TriageResult:
    rows: list[WorklistRow]
    label_names: list[str]
    images_total: int
    images_ok: int
    seconds: float
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.images_total - self.images_ok

    @property
    def studies(self) -> int:
        return sum(1 for r in self.rows if r.ok)

    @property
    def images_per_second(self) -> float:
        return self.images_total / self.seconds if self.seconds > 0 else 0.0


def _pool_context() -> multiprocessing.context.BaseContext:
    # A fresh interpreter per worker pool (never fork a process that holds ONNX Runtime or
    # torch thread pools); forkserver makes restarts after a crash cheap.
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["xraytriage.triage.engine", "xraytriage.io"])
        return context
    return multiprocessing.get_context("spawn")


class TriageEngine:
    """Runs a predictor over files and turns the results into worklist rows."""

    def __init__(
        self,
        predictor: Predictor,
        options: TriageOptions | None = None,
        prepare: Callable[[str, PreprocessContract], Prepared] = prepare_image,
    ) -> None:
        self.predictor = predictor
        self.checkpoint = predictor.checkpoint
        self.options = options or TriageOptions()
        self.prepare = prepare
        self.rules = PriorityRules(self.checkpoint.label_names, self.options.urgency, self.options.site)

    # --- stage 1 in workers --------------------------------------------------------------------
    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.options.workers, mp_context=_pool_context())

    def _crashed(self, path: str) -> Prepared:
        return Prepared(path, None, {}, f"{path}: the decoder process crashed while reading this file")

    def iter_prepared(self, paths: Iterable[str]) -> Iterator[Prepared]:
        """Prepared images in input order, with at most ``max_in_flight`` decoded ahead."""
        contract = self.checkpoint.preprocess
        if self.options.workers == 0:
            for path in paths:
                yield self.prepare(path, contract)
            return
        source = iter(paths)
        pending: deque[tuple[str, Future]] = deque()
        pool = self._new_pool()

        def refill() -> None:
            while len(pending) < self.options.max_in_flight:
                path = next(source, None)
                if path is None:
                    return
                pending.append((path, pool.submit(self.prepare, path, contract)))

        try:
            refill()
            while pending:
                path, future = pending.popleft()
                try:
                    yield future.result()
                except BrokenProcessPool:
                    # Some file in flight killed its decoder. Re-read the suspects one at a time
                    # in a fresh pool: the one that crashes again is the culprit.
                    suspects = [path, *(p for p, _ in pending)]
                    pending.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._new_pool()
                    for suspect in suspects:
                        try:
                            yield pool.submit(self.prepare, suspect, contract).result()
                        except BrokenProcessPool:
                            log.warning("decoder crashed on %s", suspect)
                            yield self._crashed(suspect)
                            pool.shutdown(wait=False, cancel_futures=True)
                            pool = self._new_pool()
                except Exception as exc:  # pickling problems and the like: report, carry on
                    yield Prepared(
                        path, None, {}, f"{path}: could not be prepared: {type(exc).__name__}: {exc}"
                    )
                refill()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # --- the model in the main process ---------------------------------------------------------
    def _logits_and_ood(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits, and each image's ``ood_score`` when the checkpoint has an OOD reference and
        the backend gives the network's features (older ONNX exports do not)."""
        reference = self.checkpoint.ood_reference()
        with_features = getattr(self.predictor, "predict_with_features", None)
        if reference is None or with_features is None:
            return self.predictor.predict_logits(images), None
        logits, features = with_features(images)
        return logits, (None if features is None else reference.scores(features))

    def _score(self, batch: list[Prepared]) -> list[ImageResult]:
        images = np.stack([p.image for p in batch])
        logits, ood = self._logits_and_ood(images)
        probs = self.checkpoint.probabilities(logits)
        abnormal = self.checkpoint.abnormal_probability(probs)
        results = []
        for i, p in enumerate(batch):
            score = None if ood is None else float(ood[i])
            results.append(
                ImageResult(
                    path=p.path,
                    study=study_key(p.path, p.meta, self.options.study_from),
                    probabilities=probs[i],
                    abnormal=float(abnormal[i]),
                    site_priority=dicom_site_priority(p.meta),
                    warnings=self.image_warnings(p.meta, score),
                    ood_score=score,
                )
            )
        return results

    def image_warnings(self, meta: dict[str, Any], ood_score: float | None = None) -> tuple[str, ...]:
        """Caveats for a scored image: low resolution, a patient age outside the model's
        training ages, features unlike the training images'."""
        size = int(self.checkpoint.preprocess.size)
        found = (
            low_resolution_warning(meta.get("width"), meta.get("height"), size),
            age_warning(meta.get("patient_age"), self.checkpoint),
            ood_warning(ood_score),
        )
        return tuple(w for w in found if w)

    def out_of_scope(self, prepared: Prepared, body_part: str | None = None) -> Prepared:
        """The prepared image, or an error when its header says the model was not made for it
        (a hand, a lateral view...): such images are reported, never given findings.
        ``body_part``: the part routing decided (``triage.routing``), which the image's pixels
        chose over the header's BodyPartExamined; the header's view is still checked."""
        meta = prepared.meta if body_part is None else {**prepared.meta, "body_part": body_part}
        problem = scope_problem(meta, self.checkpoint)
        if problem is None:
            return prepared
        return Prepared(prepared.path, None, prepared.meta, f"{prepared.path}: {problem}")

    def iter_results(
        self, paths: Iterable[str], progress: Any = None, body_parts: Mapping[str, str] | None = None
    ) -> Iterator[ImageResult]:
        """Stream image results (errors included) for ``paths``; order follows batching.
        ``body_parts``: the routed body part per path (see :meth:`out_of_scope`)."""
        batch: list[Prepared] = []
        for prepared in self.iter_prepared(paths):
            if prepared.error is None:
                prepared = self.out_of_scope(prepared, (body_parts or {}).get(prepared.path))
            if prepared.error is not None:
                if progress is not None:
                    progress.update(1)
                yield ImageResult(
                    path=prepared.path,
                    study=study_key(prepared.path, None, self.options.study_from),
                    error=prepared.error,
                )
                continue
            batch.append(prepared)
            if len(batch) >= self.options.batch_size:
                yield from self._score(batch)
                if progress is not None:
                    progress.update(len(batch))
                batch = []
        if batch:
            yield from self._score(batch)
            if progress is not None:
                progress.update(len(batch))

    # --- studies and rows ----------------------------------------------------------------------
    def study_rows(self, results: Sequence[ImageResult]) -> list[WorklistRow]:
        """Group image results into studies and score them; error results become error rows."""
        labels = list(self.checkpoint.label_names)
        thresholds = {name: self.checkpoint.threshold(name) for name in self.checkpoint.findings}
        flag_at = self.checkpoint.study_flag_threshold
        critical = {n: t for n, t in self.checkpoint.critical.items() if n in labels}
        studies: dict[str, list[ImageResult]] = defaultdict(list)
        rows: list[WorklistRow] = []
        for result in results:
            if result.ok:
                studies[result.study].append(result)
            else:
                rows.append(WorklistRow.error_row(result.study, result.path, result.error or "unknown error"))
        method = self.options.aggregate
        for study, images in studies.items():
            probs = aggregate_probabilities(np.stack([r.probabilities for r in images]), method)
            abnormal_each = np.array([r.abnormal for r in images], dtype=np.float64)
            abnormal = float(aggregate_probabilities(abnormal_each, method))
            paths = [r.path for r in images]
            site = self.rules.site_priority(study, paths, (r.site_priority for r in images))
            probabilities = {name: float(p) for name, p in zip(labels, probs, strict=True)}
            findings = format_findings(probabilities, thresholds)
            warnings = dict.fromkeys(w for r in images for w in r.warnings)
            flagged = self.checkpoint.study_flagged(abnormal, bool(findings))
            hits = critical_findings(probabilities, critical)
            ood = [r.ood_score for r in images if r.ood_score is not None]
            rows.append(
                WorklistRow(
                    study=study,
                    path=images[int(np.argmax(abnormal_each))].path,
                    priority=self.rules.priority(abnormal, probs, site),
                    abnormal=abnormal,
                    flagged=flagged,
                    tier=study_tier(flagged, hits),
                    flag_reason=flag_reason(probabilities, thresholds, abnormal, flag_at, flagged, critical),
                    findings=findings,
                    probabilities=probabilities,
                    images=len(images),
                    site_priority=site,
                    image_paths=paths,
                    warnings="; ".join(warnings),
                    ood_score=max(ood) if ood else None,
                )
            )
        return sort_worklist(rows)

    def run(self, inputs: Iterable[str | Path]) -> TriageResult:
        """Triage every file under ``inputs`` (files and folders, recursive)."""
        paths = [str(p) for p in iter_input_files(inputs)]
        start = time.perf_counter()
        progress = None
        if self.options.progress:
            from xraytriage.progress import progress_bar

            progress = progress_bar(
                total=len(paths), unit="img", desc="triage", dynamic_ncols=True, file=sys.stderr
            )
        try:
            results = list(self.iter_results(paths, progress))
        finally:
            if progress is not None:
                progress.close()
        seconds = time.perf_counter() - start
        return TriageResult(
            rows=self.study_rows(results),
            label_names=list(self.checkpoint.label_names),
            images_total=len(results),
            images_ok=sum(1 for r in results if r.ok),
            seconds=seconds,
            backend=getattr(self.predictor, "name", ""),
        )
