"""What the repository hands out: plain, immutable snapshots of database rows.

Only :mod:`xraytriage.serving.repository` reads and writes the database; everyone else (the
jobs, the worker, the API, the pages, the DICOM node) gets these records, never a session or
a mapped object, so no other module can change a column behind the repository's back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from xraytriage.serving.states import HeatmapsState, ImageState, ReadStatus, ResultsState, StudyState


@dataclass(frozen=True)
class Finding:
    """A finding a study lists: at or above its operating threshold (model output, not a diagnosis)."""

    name: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "probability": self.probability}


def findings_to_json(findings: list[Finding]) -> str:
    """The stored form, ``[{"name": "Effusion", "probability": 0.81}, ...]``, most probable
    first. Always this exact spelling: the worklist's finding filter matches on it."""
    return json.dumps([f.to_dict() for f in findings])


def findings_from_json(text: str | None) -> list[Finding]:
    return [Finding(str(item["name"]), float(item["probability"])) for item in json.loads(text or "[]")]


def findings_text(findings: list[Finding]) -> str:
    """``"Effusion 0.81; Mass 0.64"``, as the ``triage`` worklist writes them."""
    return "; ".join(f"{f.name} {f.probability:.2f}" for f in findings)


@dataclass(frozen=True)
class StudyRecord:
    id: str
    source: str = "upload"
    study_uid: str | None = None
    calling_ae: str | None = None
    name: str = ""
    received_at: float = 0.0
    last_image_at: float = 0.0
    updated_at: float = 0.0
    state: StudyState = StudyState.QUEUED
    read_status: ReadStatus = ReadStatus.NEW
    priority: float | None = None
    abnormal: float | None = None
    findings: list[Finding] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)
    site_priority: float | None = None
    key_image_id: str | None = None
    error: str = ""
    predicted_at: float | None = None
    heatmaps_state: HeatmapsState = HeatmapsState.NONE
    explained_at: float | None = None
    dicom_results_state: ResultsState = ResultsState.NONE
    dicom_results_info: dict[str, Any] | None = None
    """The DICOM node's last attempt (None when there is none)."""
    new_images_at: float | None = None
    warnings: str = ""
    tier: str | None = None
    flag_reason: str = ""
    ood_score: float | None = None
    patient_id: str = ""
    accession: str = ""
    patient_age: str = ""
    patient_sex: str = ""
    study_date: str = ""
    views: str = ""
    body_parts: str = ""
    body_part: str = ""
    """Routed services: the body part(s) the router gave the study's images."""
    model: str = ""
    """Routed services: the model that scored the study (empty: the service's one model)."""
    urgency: float | None = None
    """Routed services: ``priority`` on the scale shared by every model (what orders the list)."""

    @property
    def findings_text(self) -> str:
        return findings_text(self.findings)


@dataclass(frozen=True)
class ImageRecord:
    id: str
    study_id: str
    filename: str = ""
    format: str = ""
    size_bytes: int = 0
    state: ImageState = ImageState.QUEUED
    error: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    abnormal: float | None = None
    site_priority: float | None = None
    width: int | None = None
    height: int | None = None
    sop_instance_uid: str | None = None
    modality: str = ""
    view_position: str = ""
    body_part: str = ""
    received_at: float = 0.0
    processed_at: float | None = None
    attempts: int = 0
    ood_score: float | None = None
    warnings: tuple[str, ...] = ()
    """The triage engine's caveats for the image (age, OOD, low resolution)."""
    routed_body_part: str = ""
    """The body part the router decided (``body_part`` is the DICOM header's)."""
    model: str = ""
    """The routed model that scored the image (empty: the service's one model)."""


@dataclass(frozen=True)
class HeatmapRecord:
    image_id: str
    finding: str
    probability: float
    threshold: float
    box: dict[str, float] | None = None
    """In the original image's pixels."""
    created_at: float = 0.0


@dataclass(frozen=True)
class WorklistPage:
    rows: list[tuple[StudyRecord, int | None, int]]
    """(study, rank among triaged studies or None, number of images)."""
    total: int


@dataclass(frozen=True)
class StudyOutcome:
    """A triaged study as the drift monitor counts it."""

    abnormal: float
    findings: tuple[str, ...]
    tier: str | None
    ood_score: float | None


@dataclass(frozen=True)
class StudyView:
    """Everything the study page shows, read in one transaction."""

    study: StudyRecord
    rank: int | None
    images: list[ImageRecord]
    heatmaps: list[HeatmapRecord]


@dataclass(frozen=True)
class ImageScore:
    """The worker's result for one claimed image: probabilities, or the error."""

    image_id: str
    probabilities: dict[str, float] | None = None
    abnormal: float | None = None
    site_priority: float | None = None
    error: str = ""
    ood_score: float | None = None
    warnings: tuple[str, ...] = ()
    body_part: str = ""
    """Routed services: the body part the router decided (also on an error "no model ...")."""
    model: str = ""


@dataclass(frozen=True)
class StudyScores:
    """A settled study's numbers (the triage engine's study row)."""

    priority: float
    abnormal: float
    findings: list[Finding]
    probabilities: dict[str, float]
    site_priority: float | None
    key_image_id: str
    warnings: str
    tier: str | None = None
    flag_reason: str = ""
    ood_score: float | None = None
    urgency: float | None = None
    """Routed services: ``priority`` on the scale shared by every model."""


@dataclass(frozen=True)
class Settlement:
    """What settling decides for a study whose images are all settled: ``scores`` None when
    none of them could be read."""

    error: str
    scores: StudyScores | None
    heatmaps: HeatmapsState = HeatmapsState.NONE
    body_part: str = ""
    """Routed services: the study's body part(s), also when no model could read it."""
    model: str = ""

    @property
    def state(self) -> StudyState:
        return StudyState.DONE if self.scores is not None else StudyState.ERROR


@dataclass(frozen=True)
class ResultsInputs:
    """What the DICOM node needs to build a triaged study's SC and SR objects."""

    study: StudyRecord
    image_ids: list[str]
    key_image: ImageRecord


@dataclass(frozen=True)
class AuditRecord:
    """One audited action (see :mod:`~xraytriage.serving.audit`); never image data."""

    id: int
    at: float
    actor: str
    address: str
    action: str
    study_id: str | None
    status: int
    detail: str
