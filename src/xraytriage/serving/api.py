"""The REST API, ``/api/v1``: upload, worklist (JSON and CSV), study, heatmaps, status.

Handlers are thin: they get the service, its repository and the caller's authentication as
FastAPI dependencies, the reading is in :mod:`~xraytriage.serving.queries` (shared with the
pages) and the rest in :class:`~xraytriage.serving.service.TriageService`. Each JSON answer
has a ``response_model`` (:mod:`~xraytriage.serving.schemas`), so the OpenAPI document has
real types. Every error is JSON ``{"error": "...", "status": N}`` with a message that names
the problem.
"""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from xraytriage.errors import HeatmapQueueFull, UnknownFinding, UploadError, UploadRejected
from xraytriage.sanitize import csv_writer
from xraytriage.serving import schemas
from xraytriage.serving.auth import authenticated_by
from xraytriage.serving.outages import RETRY_AFTER_S, is_database_outage
from xraytriage.serving.picture_store import DISPLAY, Drawings
from xraytriage.serving.queries import (
    known_finding,
    study_json,
    worklist_csv_text,
    worklist_json,
)
from xraytriage.serving.record_json import iso
from xraytriage.serving.repository import Repository
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import ImageState, StudyState
from xraytriage.serving.storage import is_storage_error, safe_filename
from xraytriage.serving.uploads import receive_upload

PNG_HEADERS = {"Cache-Control": "private, max-age=3600"}
MAX_OFFSET = 2**31 - 1
"""Largest worklist offset (a database integer; 2**63 would overflow it: 422, not 500)."""
UNAUTHORIZED = "missing or wrong API token: send 'Authorization: Bearer <token>'"


def get_service(request: Request) -> TriageService:
    return request.app.state.service


Service = Annotated[TriageService, Depends(get_service)]


def get_repository(service: Service) -> Repository:
    return service.repo


def get_drawings(service: Service) -> Drawings:
    return service.drawings


Repo = Annotated[Repository, Depends(get_repository)]
Pictures = Annotated[Drawings, Depends(get_drawings)]
bearer = HTTPBearer(
    auto_error=False,
    description="The service's access token (`serve --token-file`), when it has one; the pages' "
    "sign-in cookie works too.",
)


def authenticated(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
) -> str:
    """How the caller got in (the token middleware checked it and the rate limit first); a
    second line of defence, and what documents the bearer scheme in OpenAPI."""
    how = authenticated_by(request.scope)
    if how is None or (how == "open" and request.app.state.guard.token):
        raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return how


router = APIRouter(
    prefix="/api/v1", tags=["api"], dependencies=[Depends(authenticated)], responses=schemas.ERRORS
)


def _filters(status: str | None, finding: str | None, state: str | None) -> str:
    """The worklist filters of a request, for its audit entry."""
    given = {"status": status, "finding": finding, "state": state}
    return ", ".join(f"{k}={v}" for k, v in given.items() if v) or "no filters"


def check_finding(service: TriageService, finding: str | None) -> str | None:
    """The model's name of ``finding`` (404 naming the model's findings when unknown)."""
    try:
        return known_finding(service.checkpoint, finding, service.other_checkpoints)
    except UnknownFinding as exc:
        raise HTTPException(404, str(exc)) from None


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files",
                        },
                        "study": {
                            "type": "string",
                            "description": "optional key that groups these files into one study",
                        },
                    },
                }
            }
        },
    }
}
REFUSED = {
    status: {"model": schemas.UploadRefused, "description": "no file was accepted"}
    for status in (413, 415, 422, 503, 507)
}


@router.post(
    "/images",
    status_code=202,
    summary="Upload one or more images (PNG, JPEG, TIFF, DICOM)",
    openapi_extra=UPLOAD_BODY,
    response_model=schemas.UploadResult,
    responses=REFUSED,
)
async def upload_images(request: Request, service: Service):
    """Stores each file (content-addressed), queues it for triage and returns the study ids.

    Files stream to disk and are checked by content (headers only). A file that is refused is
    listed under ``rejected`` with the reason and never stops the others; when no file is
    accepted the status is 413 (too large), 415, 422 or 507 (the server's storage is full).
    """
    try:
        upload = await receive_upload(
            request, service.store, service.storage, service.config.max_file_bytes, service.config.max_files
        )
        if not upload.files:
            raise HTTPException(422, "no file in the request: send one or more in the 'files' field")
        study = upload.fields.get("study") or None
        accepted, rejected, statuses = [], [], []
        for part in upload.files:
            if part.error is not None:
                rejected.append(
                    {"filename": safe_filename(part.filename), "error": part.error, "status": part.status}
                )
                statuses.append(part.status)
                continue
            try:
                result = await run_in_threadpool(
                    service.ingest_file, part.path, part.digest, part.filename, "upload", study
                )
                accepted.append(result.to_dict())
            except UploadRejected as exc:
                rejected.append({"filename": exc.filename, "error": exc.problem, "status": exc.status})
                statuses.append(exc.status)
    except UploadError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    finally:
        parsed = getattr(request.state, "upload", None)
        if parsed is not None:
            parsed.cleanup()
    study_ids = list(dict.fromkeys(item["study_id"] for item in accepted))
    body = {"study_ids": study_ids, "accepted": accepted, "rejected": rejected}
    if study_ids:
        count = {s: sum(1 for item in accepted if item["study_id"] == s) for s in study_ids}
        for study_id in study_ids:
            service.audit.request(request, "upload", [study_id], 202, f"{count[study_id]} file(s)")
    if not accepted:
        status = max(set(statuses), key=statuses.count) if statuses else 422
        reasons = "; ".join(f"{r['filename']}: {r['error']}" for r in rejected)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return JSONResponse(
            {"error": f"no file was accepted: {reasons}", "status": status, **body}, status, headers
        )
    return body


def csv_download(text: str, filename: str) -> Response:
    """A CSV answer the browser saves as ``filename`` (worklist and audit exports)."""
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/worklist", summary="Studies sorted by priority, with filters", response_model=schemas.Worklist)
def get_worklist(
    request: Request,
    service: Service,
    repo: Repo,
    status: Literal["new", "reading", "read"] | None = Query(None, description="reader status"),
    finding: str | None = Query(None, description="only studies that list this finding"),
    state: Literal["queued", "processing", "done", "error"] | None = Query(None),
    limit: int = Query(500, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
):
    name = check_finding(service, finding)
    hide = service.config.hide_identifiers
    service.audit.request(request, "view-worklist", detail=_filters(status, name, state), once=True)
    return worklist_json(
        repo, service.checkpoint, hide, service.pending, status, name, state, limit, offset,
        checkpoint_of=service.checkpoint_lookup, findings=service.findings,
    )  # fmt: skip


@router.get(
    "/worklist.csv",
    summary="The worklist as CSV (same filters)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def get_worklist_csv(
    request: Request,
    service: Service,
    repo: Repo,
    status: Literal["new", "reading", "read"] | None = None,
    finding: str | None = None,
    state: Literal["queued", "processing", "done", "error"] | None = None,
):
    name = check_finding(service, finding)
    text = worklist_csv_text(
        repo, service.checkpoint, service.config.hide_identifiers, status, name, state,
        checkpoint_of=service.checkpoint_lookup, label_names=service.label_names,
    )  # fmt: skip
    rows = max(text.count("\n") - 1, 0)
    service.audit.request(
        request, "export", detail=f"worklist.csv, {rows} rows; {_filters(status, name, state)}"
    )
    return csv_download(text, "worklist.csv")


def study_or_404(service: TriageService, study_id: str) -> dict:
    data = study_json(
        service.repo, service.checkpoint, service.config.hide_identifiers, study_id, service.checkpoint_lookup
    )
    if data is None:
        raise HTTPException(404, f"no study {study_id!r}")
    return data


@router.get(
    "/studies/{study_id}",
    summary="One study: findings table, images, heatmaps",
    response_model=schemas.StudyDetail,
)
def get_study(request: Request, service: Service, study_id: str):
    data = study_or_404(service, study_id)
    service.audit.request(request, "view", [study_id], once=True)
    return data


@router.patch(
    "/studies/{study_id}",
    summary="Set the reader status (new, reading, read)",
    response_model=schemas.StudyDetail,
)
def patch_study(request: Request, service: Service, study_id: str, change: schemas.StatusChange):
    if not service.set_read_status(study_id, change.status):
        raise HTTPException(404, f"no study {study_id!r}")
    service.audit.request(request, "mark", [study_id], detail=f"status {change.status}")
    return study_or_404(service, study_id)


def _heatmap_image(repo: Repository, study_id: str, image: str | None) -> str:
    """The image a heatmap request is about (404/409 when there is none to draw on)."""
    study = repo.study(study_id)
    if study is None:
        raise HTTPException(404, f"no study {study_id!r}")
    if study.state != StudyState.DONE or study.key_image_id is None:
        raise HTTPException(409, f"study {study_id} is not triaged yet (state: {study.state})")
    image_id = image or study.key_image_id
    row = repo.image(image_id)
    if row is None or row.study_id != study_id:
        raise HTTPException(404, f"study {study_id} has no image {image_id!r}")
    if row.state != ImageState.DONE:
        raise HTTPException(409, f"image {image_id[:12]}… could not be triaged: {row.error}")
    return image_id


async def _wait_for_pictures(
    drawings: Drawings, wait_seconds: float, image_id: str, items: list[str], what: str
) -> None:
    """Wait (without holding a thread) for the coalesced jobs that draw ``items``; the
    job's failure becomes 507 (storage full), 422 (unreadable image) or 500."""
    from xraytriage.errors import ImageReadError

    try:
        futures = await run_in_threadpool(drawings.futures, image_id, items)
    except HeatmapQueueFull as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    if not futures:
        return
    wrapped = [asyncio.wrap_future(f) for f in futures]
    done, _ = await asyncio.wait(wrapped, timeout=wait_seconds)
    if len(done) < len(wrapped):
        raise HTTPException(
            503, f"{what} is still being drawn; try again shortly", headers={"Retry-After": "5"}
        )
    for future in done:
        exc = future.exception()
        if exc is None:
            continue
        if is_storage_error(exc):
            raise HTTPException(
                507, f"{what} could not be saved: the server's storage is full; try again later"
            )
        if is_database_outage(exc):
            raise HTTPException(
                503,
                f"{what}: the database is unavailable; try again shortly",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        if isinstance(exc, ImageReadError):  # names the blob: say the file's name instead
            raise HTTPException(422, f"{what}: {exc.problem}")
        raise HTTPException(500, f"{what} could not be drawn: {type(exc).__name__}")


@router.get(
    "/studies/{study_id}/heatmaps/{finding}.png",
    summary="Heatmap of one finding (drawn on demand when not yet drawn)",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_heatmap(
    request: Request,
    service: Service,
    repo: Repo,
    drawings: Pictures,
    study_id: str,
    finding: str,
    image: str | None = Query(None, description="image id (default: the study's key image)"),
    style: Literal["overlay", "layer"] = Query(
        "overlay", description="overlay: radiograph + heat + box + label; layer: transparent colour layer"
    ),
):
    """Concurrent requests for the same heatmap share one drawing job (a bounded pool draws
    them); the request waits for it without holding a server thread."""
    name = check_finding(service, finding)
    if name not in service.checkpoint.label_names:  # a routed model's finding (Fracture)
        raise HTTPException(
            404,
            f"no {name} heatmap: the service draws the {service.checkpoint.name} model's findings only "
            "(`xraytriage triage --route --explain` draws every model's)",
        )
    image_id = await run_in_threadpool(_heatmap_image, repo, study_id, image)
    item = drawings.picture_item(name, style)
    await _wait_for_pictures(
        drawings, service.config.heatmap_wait_seconds, image_id, [item], f"the {name} heatmap"
    )
    await run_in_threadpool(service.audit.request, request, "view", [study_id], 200, "heatmaps", True)
    return FileResponse(
        drawings.picture_path(image_id, name, style), media_type="image/png", headers=PNG_HEADERS
    )


@router.get(
    "/images/{image_id}/display.png",
    summary="The image as the model reads it (contrast-correct, no window/level needed)",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_display(request: Request, service: Service, repo: Repo, drawings: Pictures, image_id: str):
    row = await run_in_threadpool(repo.image, image_id)
    if row is None:
        raise HTTPException(404, f"no image {image_id!r}")
    await _wait_for_pictures(drawings, service.config.heatmap_wait_seconds, image_id, [DISPLAY], row.filename)
    await run_in_threadpool(service.audit.request, request, "view", [row.study_id], 200, "images", True)
    return FileResponse(drawings.display_file(image_id), media_type="image/png", headers=PNG_HEADERS)


@router.get("/model", summary="The model: labels, thresholds, version", response_model=schemas.ModelInfo)
def get_model(service: Service):
    return service.model_info


AUDIT_COLUMNS = ("id", "at", "actor", "address", "action", "study_id", "status", "detail")


def admin_only(request: Request) -> None:
    """The audit trail is for whoever holds the API token (or anyone on a token-less loopback
    service), not for a signed-in browser."""
    if authenticated_by(request.scope) == "session":
        raise HTTPException(403, "the audit trail needs the API token: send 'Authorization: Bearer <token>'")


def _when(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _audit_items(
    service: TriageService, study: str | None, action: str | None, actor: str | None,
    since: datetime | None, until: datetime | None, limit: int | None, offset: int,
) -> tuple[int, list[dict]]:  # fmt: skip
    total, rows = service.repo.audit_entries(study, action, actor, _when(since), _when(until), limit, offset)
    items = [{**{k: getattr(r, k) for k in AUDIT_COLUMNS}, "at": iso(r.at)} for r in rows]
    return total, items


AuditFilters = {
    "study": Query(None, description="one study id", max_length=64),
    "action": Query(
        None, description="view, view-worklist, export, mark, upload, receive, send, audit, delete"
    ),
    "actor": Query(
        None, description="token, session:<8 hex>, open, dicom:<AE>, dicom, retention", max_length=64
    ),
    "since": Query(None, description="ISO 8601 date/time (UTC when no zone is given)"),
    "until": Query(None, description="ISO 8601 date/time, exclusive"),
}


@router.get("/audit", summary="The audit trail (admin: the API token)", response_model=schemas.AuditPage)
def get_audit(
    request: Request,
    service: Service,
    study: str | None = AuditFilters["study"],
    action: str | None = AuditFilters["action"],
    actor: str | None = AuditFilters["actor"],
    since: datetime | None = AuditFilters["since"],
    until: datetime | None = AuditFilters["until"],
    limit: int = Query(500, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
):
    """Who viewed, exported, marked, uploaded, received or was sent which study, newest first."""
    admin_only(request)
    service.audit.flush()  # what was recorded so far, written
    total, items = _audit_items(service, study, action, actor, since, until, limit, offset)
    service.audit.request(request, "audit", detail=f"read {len(items)} of {total}", once=True)
    return {"total": total, "items": items}


@router.get(
    "/audit.csv",
    summary="The audit trail as CSV (same filters; admin: the API token)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def get_audit_csv(
    request: Request,
    service: Service,
    study: str | None = AuditFilters["study"],
    action: str | None = AuditFilters["action"],
    actor: str | None = AuditFilters["actor"],
    since: datetime | None = AuditFilters["since"],
    until: datetime | None = AuditFilters["until"],
):
    admin_only(request)
    service.audit.flush()  # what was recorded so far, written
    total, items = _audit_items(service, study, action, actor, since, until, None, 0)
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(AUDIT_COLUMNS)
    for item in items:
        writer.writerow([item[k] for k in AUDIT_COLUMNS])
    service.audit.request(request, "audit", detail=f"exported {total} entries")
    return csv_download(buffer.getvalue(), "audit.csv")
