"""The DICOM node inside ``serve``: received images go through the same intake, database and
worker as uploads; finished studies go back to the PACS as DICOM.

A study received over DICOM is *complete* when no new image arrived for ``quiet_seconds`` and
every image is triaged. Then the node builds, in the same study, one Secondary Capture per
flagged finding (heatmap overlay, "NOT FOR DIAGNOSTIC USE" burned in) and one TID 1500
structured report (every finding's probability and threshold, UNVERIFIED), keeps them under
``DATA_DIR/results/<study>/`` and, with a destination, sends them by C-STORE. A failed send is
retried (``MAX_SEND_ATTEMPTS``, ``RETRY_SECONDS`` apart); the outcome is on the study
(``dicom_results_state``: pending -> sent | kept | error, and ``dicom_results_info``).

Received images go in through ``TriageService.ingest``; everything the node reads or writes
in the database goes through the service's :class:`~xraytriage.serving.repository.Repository`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from xraytriage.dicom import (
    Destination,
    FindingResult,
    ModelInfo,
    ReceivedImage,
    ScpConfig,
    StorageSCP,
    StoreRefused,
    build_secondary_capture,
    build_structured_report,
    parse_destination,
    send_datasets,
)
from xraytriage.errors import UploadRejected
from xraytriage.serving.config import DicomSettings
from xraytriage.serving.outages import is_database_outage
from xraytriage.serving.rendering import load_png
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import ResultsState
from xraytriage.serving.storage import write_atomic

log = logging.getLogger(__name__)

SC_SERIES_NUMBER = 9901
SR_SERIES_NUMBER = 9902
MAX_SEND_ATTEMPTS = 5
RETRY_SECONDS = 30.0
PENDING, SENT, KEPT, ERROR = ResultsState.PENDING, ResultsState.SENT, ResultsState.KEPT, ResultsState.ERROR


class DicomNode:
    def __init__(self, service: TriageService, settings: DicomSettings, host: str) -> None:
        self.service = service
        self.settings = settings
        self.destination: Destination | None = (
            parse_destination(settings.destination) if settings.destination else None
        )
        self.scp = StorageSCP(self.scp_config(settings, host, service.config.max_pixels), self.on_image)
        self.model = ModelInfo(service.checkpoint.name, service.checkpoint.package_version)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def scp_config(settings: DicomSettings, host: str, max_pixels: int | None = None) -> ScpConfig:
        """The Storage SCP's settings (timeouts and the pending-connection cap: ScpConfig's;
        ``max_pixels``: the service's pixel cap, checked before a data set is decoded)."""
        return ScpConfig(
            ae_title=settings.ae_title,
            host=settings.host or host,
            port=settings.port,
            allowed_calling_aes=settings.allowed_calling_aes,
            called_ae_titles=settings.called_ae_titles,
            max_associations=settings.max_associations,
            **({} if max_pixels is None else {"max_pixels": max_pixels}),
        )

    # --- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        self.scp.start()
        self._thread = threading.Thread(target=self._loop, name="xraytriage-dicom-results", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.scp.stop()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def port(self) -> int:
        return self.scp.port

    # --- receiving -----------------------------------------------------------------------
    def on_image(self, data: bytes, received: ReceivedImage) -> None:
        """Store and queue a received image. An image the intake refuses for good raises
        ``StoreRefused`` (a permanent C-STORE failure); anything else that goes wrong (disk full,
        database unavailable) propagates and the SCP answers "out of resources, retry"."""
        try:
            self.service.ingest(
                data, f"{received.sop_instance_uid}.dcm", source="dicom", calling_ae=received.calling_ae
            )
        except UploadRejected as exc:
            refusal = permanent_refusal(exc)
            if refusal is None:
                raise
            raise refusal from None

    # --- sending results -----------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatch_ready()
            except Exception as exc:
                if is_database_outage(exc):  # noted (and logged) once; tried again next round
                    self.service.database.note(exc)
                else:
                    log.exception("DICOM results: unexpected error")
            self._stop.wait(0.5)

    def ready_studies(self, now: float | None = None) -> list[str]:
        """DICOM studies that are complete (quiet period over, triaged, pictures drawn)."""
        now = time.time() if now is None else now
        return self.service.repo.dicom_ready(now, now - self.settings.quiet_seconds)

    def dispatch_ready(self) -> int:
        count = 0
        for study_id in self.ready_studies():
            self.dispatch(study_id)
            count += 1
        return count

    def dispatch(self, study_id: str) -> str:
        """Build and send (or keep) one study's results; returns the new results state.

        If an image arrived while the results were being built or sent, the study stays
        ``pending`` so that updated results follow.
        """
        repo = self.service.repo
        study = repo.study(study_id)
        seen_last_image = study.last_image_at if study is not None else 0.0
        attempts = ((study.dicom_results_info if study is not None else None) or {}).get("attempts", 0)
        state, info = self._build_and_send(study_id, attempts)
        if state == ResultsState.SENT:
            self.service.audit.record(
                "send", actor="dicom", study_ids=[study_id], detail=f"to {self.settings.destination or '?'}"
            )
        return repo.record_results(study_id, seen_last_image, state, info)

    def _build_and_send(self, study_id: str, attempts: int) -> tuple[ResultsState, dict[str, Any]]:
        """(results state, what to record) for one study; ``attempts`` failed sends so far."""
        try:
            datasets = self.build_results(study_id)
        except Exception as exc:
            log.exception("study %s: could not build DICOM results", study_id)
            return ERROR, {"error": f"could not build results: {type(exc).__name__}: {exc}"}
        if not datasets:
            return KEPT, {"objects": 0, "note": "no image could be triaged"}
        folder = self.save(study_id, datasets)
        if self.destination is None:
            return KEPT, {"objects": len(datasets), "folder": str(folder)}
        results = send_datasets(datasets, self.destination, calling_ae=self.settings.ae_title)
        failed = [r for r in results if not r.ok]
        sent = [{"sop_instance_uid": r.sop_instance_uid, "status": r.status} for r in results]
        if not failed:
            log.info(
                "study %s: sent %d result objects to %s", study_id, len(results), self.destination.ae_title
            )
            return SENT, {"objects": len(results), "sent": sent, "folder": str(folder)}
        attempts += 1
        message = "; ".join(sorted({r.message for r in failed}))
        log.warning("study %s: sending results failed (attempt %d): %s", study_id, attempts, message)
        state = ERROR if attempts >= MAX_SEND_ATTEMPTS else PENDING
        info = {
            "attempts": attempts,
            "error": message,
            "next_attempt_at": time.time() + RETRY_SECONDS,
            "sent": sent,
        }
        return state, info

    def save(self, study_id: str, datasets: list[pydicom.Dataset]) -> Path:
        folder = self.service.config.data_dir / "results" / study_id
        for ds in datasets:
            path = folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm"
            buffer = pydicom.filebase.DicomBytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            write_atomic(path, buffer.getvalue())
        return folder

    def model_of(self, model: str) -> ModelInfo:
        """The SR's device observer: the routed model that scored the study (the service's own
        model when not routed)."""
        if not model or self.service.routing is None:
            return self.model
        ckpt = self.service.checkpoint_of(model)
        return ModelInfo(ckpt.name, ckpt.package_version)

    def build_results(self, study_id: str) -> list[pydicom.Dataset]:
        """SC per flagged finding (with a heatmap) + one SR, for one settled study. A routed
        study is reported by the model that scored it, with its body part; only the service's
        own model draws heatmaps, so another model's study gets the SR alone."""
        service = self.service
        drawings = service.drawings
        inputs = service.repo.results_inputs(study_id)
        if inputs is None:
            return []
        routed_model = inputs.study.model
        ckpt = service.checkpoint_of(routed_model)
        model = self.model_of(routed_model)
        drawn = service.routing is None or routed_model in ("", service.routing.primary.name)
        probabilities = inputs.study.probabilities
        abnormal = inputs.study.abnormal
        key = inputs.key_image
        key_id, key_size = key.id, (key.width or 1, key.height or 1)
        image_ids = inputs.image_ids
        sources = {i: pydicom.dcmread(service.store.path(i), stop_before_pixels=True) for i in image_ids}
        findings = [
            FindingResult(name, float(probabilities[name]), float(ckpt.threshold(name)))
            for name in ckpt.findings
            if name in probabilities
        ]
        flagged = sorted((f for f in findings if f.flagged), key=lambda f: -f.probability)
        flagged = flagged[: service.config.heatmap_findings] if drawn else []
        datasets: list[pydicom.Dataset] = []
        if flagged:
            heatmaps = {h.finding: h for h in drawings.ensure(key_id, [f.name for f in flagged])}
            display = load_png(drawings.display_path(key_id))
            series = generate_uid()
            for number, finding in enumerate(flagged, start=1):
                heatmap = heatmaps.get(finding.name)
                if heatmap is None:
                    continue
                # no label: the SC builder burns in the caption, which names the finding
                overlay = np.asarray(drawings.overlay(key_id, heatmap, key_size, "", display))
                caption = (
                    f"NOT FOR DIAGNOSTIC USE - AI heatmap: {finding.name} p={finding.probability:.2f} "
                    f"(threshold {finding.threshold:.2f}) - {model.label}"
                )
                datasets.append(
                    build_secondary_capture(
                        sources[key_id],
                        overlay,
                        caption,
                        series,
                        SC_SERIES_NUMBER,
                        number,
                        model,
                        jpeg=self.settings.sc_jpeg,
                    )
                )
        datasets.append(
            build_structured_report(
                list(sources.values()),
                findings,
                model,
                generate_uid(),
                SR_SERIES_NUMBER,
                1,
                abnormal=abnormal,
                tier=inputs.study.tier,
                flag_reason=inputs.study.flag_reason,
                ood_score=inputs.study.ood_score,
                body_part=inputs.study.body_part or None,
            )
        )
        return datasets


def permanent_refusal(exc: UploadRejected) -> StoreRefused | None:
    """The C-STORE answer to an intake refusal: the file itself is the problem (4xx: over the
    pixel limit, not a radiograph, out of the model's scope...) -> 0xC000 with the reason, which
    no retry will change; a server-side problem (5xx, e.g. storage full) -> None, i.e. transient."""
    if exc.status >= 500:
        return None
    return StoreRefused(exc.problem)
