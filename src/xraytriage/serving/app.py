"""The FastAPI application: API + pages + static files, one service object behind them."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from xraytriage import __version__
from xraytriage.serving import schemas
from xraytriage.serving.auth import BodyLimit, Guard, TokenAuth, login_page, login_submit, logout
from xraytriage.serving.config import ServeConfig
from xraytriage.serving.csrf import CsrfCheck
from xraytriage.serving.db import DATABASE_ERRORS
from xraytriage.serving.metrics import metrics_registry, render
from xraytriage.serving.outages import RETRY_AFTER_S, is_database_outage
from xraytriage.serving.security import HostCheck, SecurityHeaders, allowed_host_names
from xraytriage.serving.service import TriageService
from xraytriage.serving.storage import is_storage_error

log = logging.getLogger(__name__)


def create_app(config: ServeConfig, service: TriageService | None = None) -> FastAPI:
    """The ASGI app. The service starts (recovery, workers) when the app starts and stops with it."""
    service = service or TriageService(config)
    node = None
    if config.dicom is not None:
        from xraytriage.serving.dicom_node import DicomNode

        node = DicomNode(service, config.dicom, config.host)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        if node is not None:
            node.start()
        try:
            yield
        finally:
            if node is not None:
                node.stop()
            service.stop()

    app = FastAPI(
        title="xraytriage",
        version=__version__,
        description=(
            "Radiograph triage: upload images, get a worklist sorted by the model's priority, "
            "findings with probabilities and heatmaps. Model output, not a diagnosis."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.config = config
    app.state.dicom_node = node
    guard = Guard(config.token)
    app.state.guard = guard
    app.add_middleware(CsrfCheck, guard=guard)  # inside TokenAuth: it knows how the caller got in
    app.add_middleware(TokenAuth, guard=guard)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    # outermost: foreign Host headers are refused before anything else, every answer gets the headers
    hosts = (
        None
        if (config.token and not config.allowed_hosts)
        else allowed_host_names(config.host, config.allowed_hosts)
    )
    app.add_middleware(HostCheck, allowed=hosts)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(HTTPException)  # Starlette's: unknown routes and methods too, not only ours
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if message in ("Not Found", "Method Not Allowed"):  # Starlette's own: say what was asked
            message = f"{message.lower()}: {request.method} {request.url.path[:200]}"
        return JSONResponse({"error": message, "status": exc.status_code}, exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'request'}: {err.get('msg', '')}"
            for err in exc.errors()
        ]
        return JSONResponse({"error": "invalid request: " + "; ".join(problems), "status": 422}, 422)

    async def database_error(_request: Request, exc: Exception) -> JSONResponse:
        """Handled here, not by the catch-all below: that one re-raises after answering, and
        uvicorn then closes the client's kept-alive connection."""
        if is_storage_error(exc):  # SQLite: "database or disk is full"
            return await server_error(_request, exc)
        if is_database_outage(exc):  # the database restarts or is locked: come back shortly
            service.database.note(exc)
            message = "the database is unavailable right now; nothing was changed: try again shortly"
            return JSONResponse({"error": message, "status": 503}, 503, {"Retry-After": str(RETRY_AFTER_S)})
        log.error("database error", exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})", "status": 500}, 500)

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, database_error)

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception) -> JSONResponse:
        if is_database_outage(exc):  # the database restarts or is locked: come back shortly
            service.database.note(exc)
            message = "the database is unavailable right now; nothing was changed: try again shortly"
            return JSONResponse({"error": message, "status": 503}, 503, {"Retry-After": str(RETRY_AFTER_S)})
        if is_storage_error(exc):  # a full disk is the server's condition, not a bug: say so
            service.storage.note(exc)
            message = "the server's storage is full: nothing was changed; try again later"
            return JSONResponse({"error": message, "status": 507}, 507)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})", "status": 500}, 500)

    @app.get(
        "/healthz",
        tags=["service"],
        summary="Liveness, storage and queue depth (no token needed)",
        response_model=schemas.Health,
    )
    def healthz() -> dict:
        storage = service.storage.status()
        try:
            queue = service.pending()
            if service.database.down:  # a request saw an outage; this one got through
                service.database.probe()
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            service.database.note(exc)
            queue = None
        database = service.database.status()
        problems = [f"storage: {storage['error']}"] if not storage["ok"] else []
        if not database["ok"]:
            problems.append(f"database: {database['reason']}")
        return {
            "status": "degraded" if problems else "ok",
            "reason": "; ".join(problems) or None,
            "storage": storage,
            "database": database,
            "ready": service.ready.is_set(),
            "version": __version__,
            "model": service.checkpoint.name,
            "queue": queue,
            "uptime_s": round(time.time() - service.started_at, 1),
            "drift": service.drift.report().to_dict(),
            "dicom": None
            if node is None
            else {
                "ae_title": node.settings.ae_title,
                "port": node.port,
                "destination": node.settings.destination,
            },
        }

    registry = metrics_registry(service.drift, service.pending)

    @app.get(
        "/metrics",
        tags=["service"],
        summary="Flag rates against what calibration expects, and queue depth (Prometheus text format)",
        response_class=Response,
    )
    def metrics() -> Response:
        body, content_type = render(registry)
        return Response(body, media_type=content_type)

    @app.get("/login", include_in_schema=False)
    def login_form(next: str = "/"):
        return login_page(next)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        return await login_submit(request, guard)

    @app.get("/logout", include_in_schema=False)
    def sign_out(request: Request):
        return logout(request, guard)

    _mount_api_docs(app)
    from xraytriage.serving.api import router as api_router

    app.include_router(api_router)
    _mount_pages(app)
    return app


def _mount_pages(app: FastAPI) -> None:
    """The web pages and their static files (served locally: no CDN)."""
    from xraytriage.serving import pages

    pages.mount(app)


def _mount_api_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files installed with the package (FastAPI's default page loads
    it from a CDN, which a hospital network or an offline machine cannot reach)."""
    from pathlib import Path

    import swagger_ui
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = Path(swagger_ui.__file__).resolve().parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=str(assets)), name="docs-assets")

    from xraytriage.serving.security import csp_with_inline_scripts

    @app.get("/docs", include_in_schema=False)
    def api_docs():
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="xraytriage API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )
        # Swagger UI starts from one inline script: allowed by its hash, nothing else inline
        page.headers["Content-Security-Policy"] = csp_with_inline_scripts(page.body.decode())
        return page
