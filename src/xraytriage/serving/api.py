"""The REST API, ``/api/v1``: upload, worklist (JSON and CSV), study, heatmaps, status.

Handlers are thin: the work is in :class:`~xraytriage.serving.service.TriageService`. Every
error is JSON ``{"error": "...", "status": N}`` with a message that names the problem.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from xraytriage.labels import canonical_label
from xraytriage.serving.db import DONE, READ_STATUSES, Image, Study
from xraytriage.serving.intake import UploadRejected
from xraytriage.serving.pictures import heat_layer_png, load_png, png_bytes
from xraytriage.serving.service import TriageService
from xraytriage.serving.views import study_detail, study_summary, worklist, worklist_csv

router = APIRouter(prefix="/api/v1", tags=["api"])
PNG_HEADERS = {"Cache-Control": "private, max-age=3600"}


def service_of(request: Request) -> TriageService:
    return request.app.state.service


class StatusChange(BaseModel):
    status: Literal["new", "reading", "read"]


@router.post("/images", status_code=202, summary="Upload one or more images (PNG, JPEG, TIFF, DICOM)")
async def upload_images(
    request: Request,
    files: list[UploadFile] = File(..., description="one or more image files"),
    study: str | None = Form(None, description="optional key that groups these files into one study"),
):
    """Stores each file (content-addressed), queues it for triage and returns the study ids.

    Files are checked by content. A file that is refused is listed under ``rejected`` with the
    reason and never stops the others; when no file is accepted the status is 413, 415 or 422.
    """
    service = service_of(request)
    if len(files) > service.config.max_files:
        raise HTTPException(
            413, f"{len(files)} files in one request; the limit is {service.config.max_files}"
        )
    accepted, rejected, statuses = [], [], []
    for upload in files:
        data = await upload.read()
        await upload.close()
        try:
            result = await run_in_threadpool(service.ingest, data, upload.filename, "upload", None, study)
            accepted.append(result.to_dict())
        except UploadRejected as exc:
            rejected.append({"filename": exc.filename, "error": exc.problem, "status": exc.status})
            statuses.append(exc.status)
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
        hide = service.config.hide_identifiers
        items = [study_summary(study, rank, images, hide) for study, rank, images in page.rows]
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
        rows = worklist(s, status, name, state).rows
        text = worklist_csv(rows, service.checkpoint.label_names, service.config.hide_identifiers)
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


@router.get(
    "/studies/{study_id}/heatmaps/{finding}.png",
    summary="Heatmap of one finding (drawn on demand when not yet drawn)",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_heatmap(
    request: Request,
    study_id: str,
    finding: str,
    image: str | None = Query(None, description="image id (default: the study's key image)"),
    style: Literal["overlay", "layer"] = Query(
        "overlay", description="overlay: radiograph + heat + box + label; layer: transparent colour layer"
    ),
):
    service = service_of(request)
    name = check_finding(service, finding)
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
        width, height = row.width or 1, row.height or 1
    heatmap = service.ensure_heatmaps(image_id, [name])[0]
    if style == "layer":
        layer = heat_layer_png(load_png(service.heat_path(image_id, name)))
        return Response(layer, media_type="image/png", headers=PNG_HEADERS)
    from xraytriage.explain.overlay import overlay_label

    label = overlay_label(name, heatmap.probability, heatmap.threshold)
    picture = service.overlay(image_id, heatmap, (width, height), label)
    return Response(png_bytes(picture), media_type="image/png", headers=PNG_HEADERS)


@router.get(
    "/images/{image_id}/display.png",
    summary="The image as the model reads it (contrast-correct, no window/level needed)",
    response_class=FileResponse,
)
def get_display(request: Request, image_id: str):
    service = service_of(request)
    with service.db.session() as s:
        row = s.get(Image, image_id)
        if row is None:
            raise HTTPException(404, f"no image {image_id!r}")
    from xraytriage.errors import ImageReadError

    try:
        path = service.display_path(image_id)
    except ImageReadError as exc:
        raise HTTPException(422, f"{row.filename}: {exc.problem}") from None
    return FileResponse(path, media_type="image/png", headers=PNG_HEADERS)


@router.get("/model", summary="The model: labels, thresholds, version")
def get_model(request: Request):
    return service_of(request).model_info
