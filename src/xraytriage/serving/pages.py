"""The web pages: worklist, upload, study view (Jinja2 + small scripts that call the JSON API).

Each page is rendered with the same JSON the API returns embedded in it (one shape for pages
and programs, no second rendering path), so it shows data at once; its script then keeps it
current by polling the API. Everything the pages load is served from ``/static``: no CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from xraytriage import __version__
from xraytriage.serving import api
from xraytriage.serving.config import MB
from xraytriage.serving.db import READ_STATUSES

HERE = Path(__file__).resolve().parent
TEMPLATES = Jinja2Templates(directory=str(HERE / "templates"))
TEMPLATES.env.globals["version"] = __version__
WORKLIST_PAGE_LIMIT = 500
NO_STORE = {"Cache-Control": "no-store"}


def mount(app: FastAPI) -> None:
    """Add the pages and ``/static`` to the app."""
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_api_route("/", worklist_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/upload", upload_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/studies/{study_id}", study_page, methods=["GET"], include_in_schema=False)


def _render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    service = api.service_of(request)
    context.setdefault("model_name", service.checkpoint.name)
    context["token_protected"] = bool(service.config.token)
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code, headers=NO_STORE)


def worklist_page(
    request: Request, status: str | None = None, finding: str | None = None, limit: int = WORKLIST_PAGE_LIMIT
) -> HTMLResponse:
    """All studies by priority; filters live in the query string so a filtered view can be shared."""
    service = api.service_of(request)
    notices = []
    status = status or None
    if status is not None and status not in READ_STATUSES:
        notices.append(f"unknown reader status {status!r}; showing every status")
        status = None
    finding = finding or None
    if finding is not None:
        try:
            finding = api.check_finding(service, finding)
        except HTTPException as exc:
            notices.append(f"{exc.detail}; showing every finding")
            finding = None
    limit = max(1, min(int(limit), 10_000))  # rows per page; "Show more" adds another page
    data = api.get_worklist(request, status, finding, None, limit, 0)
    return _render(
        request,
        "worklist.html",
        data=data,
        labels=list(service.checkpoint.findings),
        status=status or "",
        finding=finding or "",
        statuses=READ_STATUSES,
        notices=notices,
        page_size=limit,
        page="worklist",
    )


def upload_page(request: Request) -> HTMLResponse:
    config = api.service_of(request).config
    return _render(
        request,
        "upload.html",
        max_files=config.max_files,
        max_file_mb=round(config.max_file_bytes / MB, 1),
        page="upload",
    )


def study_page(request: Request, study_id: str) -> HTMLResponse:
    try:
        data = api.get_study(request, study_id)
    except HTTPException as exc:
        return _render(
            request,
            "error.html",
            status_code=exc.status_code,
            title="Study not found",
            message=str(exc.detail),
        )
    return _render(request, "study.html", data=data, page="study", title=data["name"] or study_id)
