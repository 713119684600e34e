"""The web pages: worklist, upload, study view (Jinja2 + small scripts that call the JSON API).

Each page is rendered with the same JSON the API returns embedded in it (one shape for pages
and programs, no second rendering path), so it shows data at once; its script then keeps it
current by polling the API. Everything the pages load is served from ``/static``: no CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from xraytriage import __version__
from xraytriage.errors import UnknownFinding
from xraytriage.serving.api import Service
from xraytriage.serving.auth import COOKIE
from xraytriage.serving.config import MB
from xraytriage.serving.queries import known_finding, study_json, worklist_json
from xraytriage.serving.service import TriageService
from xraytriage.serving.states import ReadStatus

READ_STATUSES = tuple(s.value for s in ReadStatus)

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


def page_csrf_token(request: Request) -> str:
    """The signed-in session's CSRF token for the page's forms and fetches ("" without one)."""
    sessions = request.app.state.guard.sessions
    return (sessions.csrf_token(request.cookies.get(COOKIE)) if sessions else None) or ""


def _render(
    request: Request, service: TriageService, name: str, status_code: int = 200, **context
) -> HTMLResponse:
    context.setdefault("model_name", service.checkpoint.name)
    context["token_protected"] = bool(service.config.token)
    context["csrf_token"] = page_csrf_token(request)
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status_code, headers=NO_STORE)


def worklist_page(
    request: Request,
    service: Service,
    status: str | None = None,
    finding: str | None = None,
    limit: int = WORKLIST_PAGE_LIMIT,
) -> HTMLResponse:
    """All studies by priority; filters live in the query string so a filtered view can be shared."""
    notices = []
    status = status or None
    if status is not None and status not in READ_STATUSES:
        notices.append(f"unknown reader status {status!r}; showing every status")
        status = None
    finding = finding or None
    if finding is not None:
        try:
            finding = known_finding(service.checkpoint, finding, service.other_checkpoints)
        except UnknownFinding as exc:
            notices.append(f"{exc}; showing every finding")
            finding = None
    limit = max(1, min(int(limit), 10_000))  # rows per page; "Show more" adds another page
    hide = service.config.hide_identifiers
    service.audit.request(request, "view-worklist", detail="page", once=True)
    data = worklist_json(
        service.repo, service.checkpoint, hide, service.pending, status, finding, None, limit,
        checkpoint_of=service.checkpoint_lookup, findings=service.findings,
    )  # fmt: skip
    drift = service.drift.report().banner()
    return _render(
        request,
        service,
        "worklist.html",
        drift=drift,
        data=data,
        labels=service.findings,
        status=status or "",
        finding=finding or "",
        statuses=READ_STATUSES,
        notices=notices,
        page_size=limit,
        page="worklist",
    )


def upload_page(request: Request, service: Service) -> HTMLResponse:
    config = service.config
    return _render(
        request,
        service,
        "upload.html",
        max_files=config.max_files,
        max_file_mb=round(config.max_file_bytes / MB, 1),
        page="upload",
    )


def study_page(request: Request, service: Service, study_id: str) -> HTMLResponse:
    data = study_json(
        service.repo, service.checkpoint, service.config.hide_identifiers, study_id, service.checkpoint_lookup
    )
    if data is None:
        return _render(
            request,
            service,
            "error.html",
            status_code=404,
            title="Study not found",
            message=f"no study {study_id!r}",
        )
    service.audit.request(request, "view", [study_id], detail="page", once=True)
    return _render(request, service, "study.html", data=data, page="study", title=data["name"] or study_id)
