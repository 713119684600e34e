"""The REST API, ``/api/v1``: upload, worklist (JSON and CSV), study, heatmaps, status.

Handlers are thin: the work is in :class:`~xraytriage.serving.service.TriageService`. Every
error is JSON ``{"error": "...", "status": N}`` with a message that names the problem.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from xraytriage.labels import canonical_label
from xraytriage.serving.db import DONE, READ_STATUSES, Image, Study
from xraytriage.serving.heatmap_jobs import HeatmapQueueFull
from xraytriage.serving.intake import UploadRejected
from xraytriage.serving.service import DISPLAY, TriageService
from xraytriage.serving.storage import is_storage_error, safe_filename
from xraytriage.serving.uploads import UploadError, receive_upload
from xraytriage.serving.views import study_detail, study_summary, worklist, worklist_csv

router = APIRouter(prefix="/api/v1", tags=["api"])
PNG_HEADERS = {"Cache-Control": "private, max-age=3600"}


def service_of(request: Request) -> TriageService:
    return request.app.state.service


class StatusChange(BaseModel):
    status: Literal["new", "reading", "read"]


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


@router.post(
    "/images",
    status_code=202,
    summary="Upload one or more images (PNG, JPEG, TIFF, DICOM)",
    openapi_extra=UPLOAD_BODY,
)
async def upload_images(request: Request):
    """Stores each file (content-addressed), queues it for triage and returns the study ids.

    Files stream to disk and are checked by content (headers only). A file that is refused is
    listed under ``rejected`` with the reason and never stops the others; when no file is
    accepted the status is 413 (too large), 415, 422 or 507 (the server's storage is full).
    """
    service = service_of(request)
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
    if not accepted:
        status = max(set(statuses), key=statuses.count) if statuses else 422
        reasons = "; ".join(f"{r['filename']}: {r['error']}" for r in rejected)
        return JSONResponse({"error": f"no file was accepted: {reasons}", "status": status, **body}, status)
    return body


@router.get("/worklist", summary="Studies sorted by priority, with filters")
def get_worklist(
    request: Request,
    status: Literal["new", "reading", "read"] | None = Query(None, description="reader status"),
    finding: str | None = Query(None, description="only studies that list this finding"),
    state: Literal["queued", "processing", "done", "error"] | None = Query(None),
    limit: int = Query(500, ge=1, le=10000),
    offset: int = Query(0, ge=0),
):
    service = service_of(request)
    name = check_finding(service, finding)
    with service.db.session() as s:
        page = worklist(s, status, name, state, limit, offset)
        flag_at = service.checkpoint.study_flag_threshold
        hide = service.config.hide_identifiers
        items = [study_summary(study, rank, images, hide, flag_at) for study, rank, images in page.rows]
    return {
        "total": page.total,
        "items": items,
        "labels": list(service.checkpoint.findings),
        "queue": service.pending(),
        "identifiers_hidden": service.config.hide_identifiers,
    }


@router.get("/worklist.csv", summary="The worklist as CSV (same filters)", response_class=Response)
def get_worklist_csv(
    request: Request,
    status: Literal["new", "reading", "read"] | None = None,
    finding: str | None = None,
    state: Literal["queued", "processing", "done", "error"] | None = None,
):
    service = service_of(request)
    name = check_finding(service, finding)
    with service.db.session() as s:
        ckpt = service.checkpoint
        rows = worklist(s, status, name, state).rows
        text = worklist_csv(
            rows, ckpt.label_names, service.config.hide_identifiers, ckpt.study_flag_threshold
        )
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="worklist.csv"'},
    )


def check_finding(service: TriageService, finding: str | None) -> str | None:
    if finding is None:
        return None
    names = {canonical_label(n): n for n in service.checkpoint.label_names}
    key = canonical_label(finding)
    if key not in names:
        raise HTTPException(
            404, f"unknown finding {finding!r}; this model's are: {', '.join(service.checkpoint.findings)}"
        )
    return names[key]


def _study_or_404(session, study_id: str) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise HTTPException(404, f"no study {study_id!r}")
    return study


@router.get("/studies/{study_id}", summary="One study: findings table, images, heatmaps")
def get_study(request: Request, study_id: str):
    service = service_of(request)
    with service.db.session() as s:
        study = _study_or_404(s, study_id)
        return study_detail(s, study, service.checkpoint, service.config.hide_identifiers)


@router.patch("/studies/{study_id}", summary="Set the reader status (new, reading, read)")
def patch_study(request: Request, study_id: str, change: StatusChange):
    service = service_of(request)
    if change.status not in READ_STATUSES:  # pragma: no cover - pydantic already checks
        raise HTTPException(422, f"status must be one of {', '.join(READ_STATUSES)}")
    if not service.set_read_status(study_id, change.status):
        raise HTTPException(404, f"no study {study_id!r}")
    return get_study(request, study_id)


def _heatmap_image(service: TriageService, study_id: str, image: str | None) -> str:
    """The image a heatmap request is about (404/409 when there is none to draw on)."""
    with service.db.session() as s:
        study = _study_or_404(s, study_id)
        if study.state != DONE or study.key_image_id is None:
            raise HTTPException(409, f"study {study_id} is not triaged yet (state: {study.state})")
        image_id = image or study.key_image_id
        row = s.get(Image, image_id)
        if row is None or row.study_id != study_id:
            raise HTTPException(404, f"study {study_id} has no image {image_id!r}")
        if row.state != DONE:
            raise HTTPException(409, f"image {image_id[:12]}… could not be triaged: {row.error}")
        return image_id


async def _wait_for_pictures(service: TriageService, image_id: str, findings: list[str], what: str) -> None:
    """Wait (without holding a thread) for the coalesced jobs that draw ``findings``; the
    job's failure becomes 507 (storage full), 422 (unreadable image) or 500."""
    from xraytriage.errors import ImageReadError

    try:
        futures = await run_in_threadpool(service.heatmap_futures, image_id, findings)
    except HeatmapQueueFull as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    if not futures:
        return
    wrapped = [asyncio.wrap_future(f) for f in futures]
    done, _ = await asyncio.wait(wrapped, timeout=service.config.heatmap_wait_seconds)
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
    study_id: str,
    finding: str,
    image: str | None = Query(None, description="image id (default: the study's key image)"),
    style: Literal["overlay", "layer"] = Query(
        "overlay", description="overlay: radiograph + heat + box + label; layer: transparent colour layer"
    ),
):
    """Concurrent requests for the same heatmap share one drawing job (a bounded pool draws
    them); the request waits for it without holding a server thread."""
    service = service_of(request)
    name = check_finding(service, finding)
    image_id = await run_in_threadpool(_heatmap_image, service, study_id, image)
    await _wait_for_pictures(service, image_id, [service.picture_item(name, style)], f"the {name} heatmap")
    return FileResponse(
        service.picture_path(image_id, name, style), media_type="image/png", headers=PNG_HEADERS
    )


@router.get(
    "/images/{image_id}/display.png",
    summary="The image as the model reads it (contrast-correct, no window/level needed)",
    response_class=FileResponse,
)
async def get_display(request: Request, image_id: str):
    service = service_of(request)

    def filename() -> str | None:
        with service.db.session() as s:
            row = s.get(Image, image_id)
            return None if row is None else row.filename

    name = await run_in_threadpool(filename)
    if name is None:
        raise HTTPException(404, f"no image {image_id!r}")
    await _wait_for_pictures(service, image_id, [DISPLAY], name)
    return FileResponse(service.display_file(image_id), media_type="image/png", headers=PNG_HEADERS)


@router.get("/model", summary="The model: labels, thresholds, version")
def get_model(request: Request):
    return service_of(request).model_info
