"""The JSON the API answers with, as pydantic models: each endpoint declares one as its
``response_model``, so ``/openapi.json`` (and ``/docs``) documents real types and FastAPI
checks every answer against them. Keys and values are those :mod:`~xraytriage.serving.record_json`
builds (one shape for pages and programs). Times are ISO 8601 strings (UTC); probabilities,
priorities and thresholds are rounded as in the ``triage`` worklist.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

StudyStateName = Literal["queued", "processing", "done", "error"]
ReadStatusName = Literal["new", "reading", "read"]


class ErrorBody(BaseModel):
    """Every error: what went wrong and why, and the HTTP status."""

    error: str
    status: int


class Finding(BaseModel):
    name: str
    probability: float


class StudySummary(BaseModel):
    """A study as the worklist lists it."""

    id: str
    rank: int | None = Field(description="place among triaged studies (None until triaged)")
    name: str
    patient_id: str | None
    accession: str | None
    patient_age: str | None = Field(description='e.g. "45 y"')
    patient_sex: str | None
    study_date: str | None = Field(description="ISO date")
    view: str | None
    body_part: str | None
    identifiers_hidden: bool
    source: str = Field(description="upload or dicom")
    state: StudyStateName
    read_status: ReadStatusName
    new_images_since_read: bool
    new_images_at: str | None
    warnings: list[str]
    priority: float | None
    abnormal: float | None = Field(description="P(abnormal) of the study")
    flagged: bool | None = Field(description="P(abnormal) at or above the model's study threshold")
    tier: Literal["critical", "flagged", "routine"] | None = Field(
        None,
        description="critical: a critical finding (e.g. Pneumothorax) at or above its own high-specificity "
        "threshold, listed first; flagged: the study flag; routine: neither (None until triaged)",
    )
    flag_reason: str | None = Field(
        None, description="what drives the flag: the findings above threshold, or the study threshold"
    )
    ood_score: float | None = Field(
        None, description="how unlike the training images the study is (higher = less alike); None: unknown"
    )
    site_priority: float | None = Field(
        None, description="the priority the site gave (STAT 1.0 goes first, with the critical tier)"
    )
    routed_body_part: str | None = Field(
        None, description="routed services: the body part the router gave the study's images (CHEST, HAND...)"
    )
    model: str | None = Field(
        None, description="routed services: the model that scored the study (chest, fracture)"
    )
    urgency: float | None = Field(
        None,
        description="routed services: priority on the scale shared by every model, which orders the worklist "
        "(docs/routing.md)",
    )
    findings: list[Finding] = Field(description="findings at or above their threshold, most probable first")
    findings_text: str = Field(description='the same as text: "Effusion 0.81; Mass 0.64"')
    images: int
    error: str | None
    received_at: str | None
    predicted_at: str | None
    explained_at: str | None
    heatmaps_state: Literal["none", "pending", "processing", "done", "error"]
    dicom_results_state: Literal["none", "pending", "sent", "kept", "error"] | None
    seconds_to_result: float | None
    seconds_to_heatmaps: float | None
    url: str
    api_url: str


class FindingRow(BaseModel):
    name: str
    probability: float | None
    threshold: float | None
    flagged: bool
    is_finding: bool


class ImageItem(BaseModel):
    id: str
    filename: str
    format: str
    state: Literal["queued", "processing", "done", "error"]
    error: str | None
    width: int | None
    height: int | None
    modality: str | None
    view: str | None
    body_part: str | None
    routed_body_part: str | None = Field(None, description="routed services: the router's body part")
    model: str | None = Field(None, description="routed services: the model that scored the image")
    abnormal: float | None
    received_at: str | None
    processed_at: str | None
    display_url: str
    warning: str | None = Field(description="e.g. a low resolution")


class HeatmapItem(BaseModel):
    finding: str
    image_id: str
    probability: float | None
    threshold: float | None
    box: dict[str, Any] | None = Field(description="x, y, w, h (and score) in the original image's pixels")
    url: str
    layer_url: str
    colour: str | None = Field(
        default=None,
        description="the finding's colour (#rrggbb) in the heat layer, box and every overlay picture",
    )
    scale: dict[str, Any] | None = Field(
        default=None,
        description="how the layer maps heat to colour: clear below `level` of the map's maximum, then "
        "`opacity` and `shade` (brightness) from the level to the maximum",
    )


class StudyDetail(StudySummary):
    """Everything the study page shows."""

    key_image_id: str | None
    findings_table: list[FindingRow]
    image_list: list[ImageItem]
    heatmaps: list[HeatmapItem]
    disclaimer: str
    dicom_results_info: dict[str, Any] | None


class QueueDepth(BaseModel):
    images: int = Field(description="images queued or being scored")
    heatmaps: int = Field(description="studies whose heatmaps are due or being drawn")
    heatmap_jobs: int = Field(description="drawing jobs waiting or running")


class Worklist(BaseModel):
    total: int = Field(description="studies that match the filters")
    items: list[StudySummary]
    labels: list[str]
    queue: QueueDepth
    identifiers_hidden: bool


class AcceptedFile(BaseModel):
    filename: str
    image_id: str
    study_id: str
    duplicate: bool
    warnings: list[str]


class RejectedFile(BaseModel):
    filename: str
    error: str
    status: int


class UploadResult(BaseModel):
    study_ids: list[str]
    accepted: list[AcceptedFile]
    rejected: list[RejectedFile]


class UploadRefused(UploadResult, ErrorBody):
    """No file was accepted: the error, and what happened to each file."""


class StatusChange(BaseModel):
    status: ReadStatusName


class ModelInfo(BaseModel):
    name: str
    version: str
    created: str | None
    backbone: str
    input_size: int
    labels: list[str]
    findings: list[str]
    thresholds: dict[str, float]
    study_flag_threshold: float | None
    critical: dict[str, float] = Field(
        default_factory=dict, description="critical findings and their own thresholds (the critical tier)"
    )
    backend: str
    file: str
    routing: dict[str, Any] | None = Field(
        None, description="routed services: the router and each model (name, checkpoint, version, body parts)"
    )


class StorageState(BaseModel):
    ok: bool
    free_mb: float
    reserve_mb: float
    error: str | None


class DicomNodeState(BaseModel):
    ae_title: str
    port: int
    destination: str | None


class RateDeparture(BaseModel):
    rate: str = Field(description="flagged, critical, finding or ood")
    finding: str
    count: int
    studies: int
    observed: float
    expected: float
    low: float = Field(description="lowest rate the binomial bound allows")
    high: float = Field(description="highest rate the binomial bound allows")
    departed: bool
    message: str


class DriftState(BaseModel):
    status: Literal["ok", "departure", "warming_up", "no_expectation"] = Field(
        description="departure: a flag rate of the last studies is outside what calibration expects"
    )
    window: int
    studies: int = Field(description="triaged studies counted (the last `window`)")
    min_studies: int
    alpha: float
    departures: list[RateDeparture]
    message: str | None


class DatabaseState(BaseModel):
    ok: bool
    reason: str | None = Field(None, description="why the database cannot be used (an outage)")
    since: float | None = Field(None, description="UNIX time the outage was first seen")
    dialect: str


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    reason: str | None = Field(None, description="what is degraded (storage, database), when something is")
    storage: StorageState
    database: DatabaseState | None = None
    ready: bool = Field(description="warmed up: the heatmap network is built")
    version: str
    model: str
    queue: QueueDepth | None = Field(description="None while the database is unavailable")
    uptime_s: float
    drift: DriftState | None = None
    dicom: DicomNodeState | None


ERRORS = {status: {"model": ErrorBody} for status in (401, 404, 409, 422, 429, 503, 507)}
"""Error answers, for the OpenAPI document."""


class AuditItem(BaseModel):
    id: int
    at: str = Field(description="ISO 8601, UTC")
    actor: str = Field(description="token, session:<8 hex>, open, dicom:<AE title>, dicom, retention")
    address: str
    action: str
    study_id: str | None
    status: int
    detail: str


class AuditPage(BaseModel):
    total: int
    items: list[AuditItem]
