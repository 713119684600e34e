"""The service object the web API and the DICOM node share: intake, the worker pool, pictures.

It builds the parts and wires them: the database and its :class:`Repository` (the only code
that touches the tables), the triage engine, :class:`Drawings` (pictures), the
:class:`Jobs` and the :class:`WorkerPool` that runs them.

service = TriageService(ServeConfig(data_dir=..., model_path=...))
service.start()                      # recover unfinished work, start the worker threads
accepted = service.ingest(data, "chest.png")
...
service.stop()
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xraytriage.errors import UploadRejected
from xraytriage.scope import low_resolution_warning, scope_problem
from xraytriage.serving import decode
from xraytriage.serving.audit import AuditLog
from xraytriage.serving.config import ServeConfig
from xraytriage.serving.db import Database
from xraytriage.serving.drift import DriftMonitor, DriftWatch
from xraytriage.serving.intake import inspect_upload, study_id_for
from xraytriage.serving.jobs import MAX_ATTEMPTS, HeatmapPolicy, Jobs
from xraytriage.serving.outages import DatabaseMonitor, RetryingRepository, is_database_outage
from xraytriage.serving.picture_store import Drawings
from xraytriage.serving.repository import Repository
from xraytriage.serving.retention import Retention
from xraytriage.serving.routing import ServiceRouting
from xraytriage.serving.states import ReadStatus
from xraytriage.serving.storage import BlobStore, StorageMonitor, is_storage_error, safe_filename
from xraytriage.serving.worker import WorkerPool

log = logging.getLogger(__name__)
ORPHAN_GRACE_S = 300.0
"""A blob without a database row is removed at start once it is this old (an upload that a
kill interrupted between storing the file and committing its row)."""


@dataclass
class Accepted:
    filename: str
    image_id: str
    study_id: str
    duplicate: bool
    warnings: list[str] = field(default_factory=list)
    """Accepted, with caveats the reader should see (e.g. low resolution)."""

    def to_dict(self) -> dict:
        return asdict(self)


class TriageService:
    def __init__(self, config: ServeConfig) -> None:
        from xraytriage.models.inference import make_predictor
        from xraytriage.triage.engine import TriageEngine, TriageOptions

        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = BlobStore(config.data_dir)
        self.storage = StorageMonitor(config.data_dir, config.min_free_bytes)
        self.db = Database(config.database_url, timeout=config.db_timeout_s)
        self.repo = Repository(self.db)
        self.database = DatabaseMonitor(self.db, config.db_retry_seconds)
        # the worker and its jobs retry through an outage; requests answer 503 instead
        background = RetryingRepository(self.repo, self.database)
        self.audit = AuditLog(self.repo)
        self.model_path = config.model_file
        self.predictor = make_predictor(self.model_path, backend=config.backend)
        self.checkpoint = self.predictor.checkpoint
        options = TriageOptions(batch_size=config.batch_size, workers=0, progress=False)
        prepare = functools.partial(
            decode.prepare_for_model, max_pixels=config.max_pixels, max_side=config.display_size
        )
        self.engine = TriageEngine(self.predictor, options, prepare=prepare)
        self.routing = self._routing(options, prepare) if config.route else None
        self.drawings = Drawings(
            self.repo,
            self.store,
            self.storage,
            self.checkpoint,
            config.max_pixels,
            config.display_size,
            config.heatmap_threads,
            config.heatmap_queue,
        )
        policy = HeatmapPolicy(config.heatmaps, config.heatmap_findings)
        self.jobs = Jobs(background, self.engine, self.store, self.drawings, policy, self.routing)
        self.wake = threading.Event()
        self.ready = threading.Event()
        """Set when the service is warmed up (the explainer built when heatmaps are on)."""
        self.workers = WorkerPool(
            background,
            self.jobs,
            self.storage,
            self.wake,
            config.workers,
            config.batch_size,
            config.heatmaps,
            config.poll_seconds,
            database=self.database,
        )
        self.retention = (
            Retention(self.repo, self.store, self.audit, config.retention_days, config.retention_every_s)
            if config.retention_days
            else None
        )
        # the drift monitor counts the service's own model's studies (every study when not routed)
        outcomes = (
            functools.partial(self.repo.recent_outcomes, models=("", self.routing.primary.name))
            if self.routing
            else None
        )
        self.drift = DriftWatch(
            outcomes or self.repo.recent_outcomes,
            DriftMonitor.for_checkpoint(
                self.checkpoint, window=config.drift_window, min_studies=config.drift_min_studies
            ),
        )
        self.started_at = time.time()

    def _routing(self, options, prepare) -> ServiceRouting:
        """The router and the routed models (the service's own engine first)."""
        from xraytriage.models.inference import make_predictor
        from xraytriage.triage.engine import TriageEngine
        from xraytriage.triage.routing import RoutedModel, RoutedTriage

        config = self.config
        models = [RoutedModel(config.routed_models[0][0], self.engine)]
        for name, path in config.routed_models[1:]:
            engine = TriageEngine(make_predictor(path, backend=config.backend), options, prepare=prepare)
            models.append(RoutedModel(name, engine))
        router = make_predictor(config.router_file, backend=config.backend)
        return ServiceRouting(RoutedTriage(router, models, options, prepare=prepare))

    def checkpoint_of(self, model: str):
        """The checkpoint of a routed model by name (the service's own for ``""``)."""
        return self.routing.engine_of(model).checkpoint if self.routing else self.checkpoint

    @property
    def checkpoint_lookup(self):
        """:meth:`checkpoint_of` for the queries when routing, else None (the one model)."""
        return self.checkpoint_of if self.routing else None

    @property
    def other_checkpoints(self) -> list:
        """The routed models' checkpoints besides the service's own (none when not routed)."""
        return [m.engine.checkpoint for m in self.routing.models[1:]] if self.routing else []

    @property
    def label_names(self) -> list[str]:
        """Every model's labels (the CSV's probability columns), the service's own first."""
        names = list(self.checkpoint.label_names)
        for ckpt in self.other_checkpoints:
            names.extend(n for n in ckpt.label_names if n not in names)
        return names

    @property
    def findings(self) -> list[str]:
        """Every model's findings (the worklist's finding filter), the service's own first."""
        names = list(self.checkpoint.findings)
        for ckpt in self.other_checkpoints:
            names.extend(n for n in ckpt.findings if n not in names)
        return names

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        try:
            swept = self.store.sweep(self.repo.image_ids(), ORPHAN_GRACE_S)
            if any(swept.values()):
                log.info("removed %d temporary files and %d orphan blobs", swept["temp"], swept["orphans"])
        except OSError as exc:
            log.warning("could not clean the data folder: %s", exc)
        recovered, given_up = self.repo.recover(MAX_ATTEMPTS)
        if recovered:
            log.info("re-queued %d images left unfinished by the last run", recovered)
        if given_up:
            log.warning("gave up on %d images that were in flight %d times", given_up, MAX_ATTEMPTS)
        for study_id in self.repo.unsettled_study_ids():
            self.jobs.settle(study_id)
        self.workers.start()
        self.wake.set()
        if self.retention is not None:
            self.retention.start()
        if self.config.heatmaps and self.config.workers > 0:
            # build the explainer (a PyTorch copy of the network) now, not on the first study;
            # /healthz says "ready" once it is there
            threading.Thread(target=self._warm_up, name="xraytriage-warm-up", daemon=True).start()
        else:
            self.ready.set()

    def _warm_up(self) -> None:
        try:
            _ = self.drawings.explainer.feature_shape
        except Exception:  # heatmaps will report their own error when asked for
            log.warning("could not prepare the explainer", exc_info=True)
        finally:
            self.ready.set()

    def stop(self) -> None:
        if self.retention is not None:
            self.retention.stop()
        self.workers.stop()
        self.drawings.shutdown()
        self.audit.stop()

    @property
    def model_info(self) -> dict:
        ckpt = self.checkpoint
        return {
            "name": ckpt.name,
            "version": ckpt.package_version,
            "created": ckpt.created,
            "backbone": ckpt.model.backbone,
            "input_size": int(ckpt.preprocess.size),
            "labels": list(ckpt.label_names),
            "findings": list(ckpt.findings),
            "thresholds": {n: ckpt.threshold(n) for n in ckpt.findings},
            "study_flag_threshold": ckpt.study_flag_threshold,
            "critical": dict(ckpt.critical),
            "backend": getattr(self.predictor, "name", ""),
            "file": self.model_path.name,
            "routing": self.routing_info,
        }

    @property
    def routing_info(self) -> dict | None:
        """The routed models (name, checkpoint name and version, body parts), None when off."""
        if self.routing is None:
            return None
        return {
            "router": self.config.router_file.name,
            "models": [
                {
                    "name": m.name,
                    "model": m.engine.checkpoint.name,
                    "version": m.engine.checkpoint.package_version,
                    "body_parts": m.body_parts,
                }
                for m in self.routing.models
            ],
        }

    # --- intake --------------------------------------------------------------------------
    def ingest(
        self,
        data: bytes,
        filename: str | None,
        source: str = "upload",
        calling_ae: str | None = None,
        study_key: str | None = None,
    ) -> Accepted:
        """Check, store durably and queue one file given as bytes (the DICOM node). Raises
        :class:`UploadRejected` (status 507 when the storage is full)."""
        return self._ingest(data, filename, source, calling_ae, study_key)

    def ingest_file(
        self,
        path: Path,
        digest: str,
        filename: str | None,
        source: str = "upload",
        study_key: str | None = None,
    ) -> Accepted:
        """Like :meth:`ingest` for an upload streamed into ``path`` (a file in the store's
        ``tmp`` folder, hashed to ``digest`` while it was written): it is moved into place,
        never read into memory. The caller removes ``path`` if it is still there."""
        return self._ingest(Path(path), filename, source, None, study_key, digest)

    def _ingest(
        self,
        source: bytes | Path,
        filename: str | None,
        origin: str,
        calling_ae: str | None,
        study_key: str | None,
        digest: str | None = None,
    ) -> Accepted:
        name = safe_filename(filename)
        info = inspect_upload(source, name, self.config.max_file_bytes, self.config.max_pixels)
        header = {"body_part": info.body_part, "view_position": info.view_position}
        problem = self.routing.accepts(header) if self.routing else scope_problem(header, self.checkpoint)
        if problem:  # a hand, a lateral view...: never stored, never given findings
            raise UploadRejected(name, problem, 422)
        warning = low_resolution_warning(info.width, info.height, int(self.checkpoint.preprocess.size))
        warnings = [warning] if warning else []
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        try:
            self.storage.refuse_if_full(0 if isinstance(source, Path) else size)
            if isinstance(source, bytes):
                digest, created = self.store.put(source)
            else:
                assert digest is not None
                created = self.store.put_file(source, digest)
        except OSError as exc:
            raise self._storage_rejection(name, exc) from None
        assert digest is not None
        study_id = study_id_for(info, digest, study_key)
        try:
            recorded = self.repo.record_image(digest, study_id, name, info, size, origin, calling_ae)
        except Exception as exc:
            outage = is_database_outage(exc) and not is_storage_error(exc)  # a full disk is a 507
            if not (outage or is_storage_error(exc)):
                raise
            if created:  # nothing refers to it: no orphan left behind
                self.store.remove(digest)
            if outage:  # not acknowledged: the sender tries again later
                self.database.note(exc)
                raise UploadRejected(
                    name, "the database is unavailable right now: nothing was stored; try again shortly", 503
                ) from None
            raise self._storage_rejection(name, exc) from None
        self.database.recovered()
        if recorded.replaced:
            log.info(
                "image %s… replaces %d earlier copies of its SOP instance",
                digest[:12],
                len(recorded.replaced),
            )
            for old in recorded.replaced:  # their rows are gone: so are their blob and pictures
                self.store.discard(old)
        if not recorded.duplicate:
            log.info("queued image %s… in study %s (%s)", digest[:12], study_id, info.format)
            if origin == "dicom":  # uploads are audited by the API, which knows the caller
                self.audit.record(
                    "receive", actor=f"dicom:{calling_ae or '?'}", study_ids=[recorded.study_id], once=True
                )
            self.wake.set()
        return Accepted(name, digest, recorded.study_id, recorded.duplicate, warnings)

    def _storage_rejection(self, name: str, exc: BaseException) -> UploadRejected:
        if not is_storage_error(exc):
            raise exc
        self.storage.note(exc)
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "storage is full" not in detail:
            detail = f"the server's storage is full ({detail}): nothing was stored; try again later"
        return UploadRejected(name, detail, 507)

    # --- reader status -------------------------------------------------------------------
    def set_read_status(self, study_id: str, status: str) -> bool:
        return self.repo.set_read_status(study_id, ReadStatus(status))

    # --- queue ---------------------------------------------------------------------------
    def pending(self) -> dict[str, int]:
        return {**self.repo.queue_depth(), "heatmap_jobs": self.drawings.pending()}


__all__ = ["Accepted", "TriageService", "UploadRejected"]
