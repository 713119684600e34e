"""Bearer-token protection and request-size limits, as ASGI middleware.

With a token set, every page and API call needs ``Authorization: Bearer <token>`` or the
cookie the login page sets; ``/healthz`` and the static files stay open (monitors, the login
page's own style). Without a token the service is meant for localhost only (the default
bind), and ``serve`` warns when it is bound elsewhere without one.
"""

from __future__ import annotations

import hmac
from html import escape
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "xraytriage_token"
OPEN_PATHS = ("/healthz", "/login", "/logout", "/static/", "/favicon.ico")


def token_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def request_token(scope: Scope) -> str | None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return None


def wants_html(scope: Scope) -> bool:
    path = scope.get("path", "")
    if path.startswith(("/api/", "/docs", "/openapi", "/redoc")):
        return False
    accept = dict(scope.get("headers", [])).get(b"accept", b"").decode("latin-1")
    return "text/html" in accept


class TokenAuth:
    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.token:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/login" or path.startswith(OPEN_PATHS) or token_matches(self.token, request_token(scope)):
            await self.app(scope, receive, send)
            return
        response: Response
        if wants_html(scope):
            target = path + (
                "?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else ""
            )
            response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        else:
            response = JSONResponse(
                {"error": "missing or wrong API token: send 'Authorization: Bearer <token>'", "status": 401},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        await response(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, int(declared))
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(seen)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked_send)
        except TooLarge as exc:
            if not started:
                await self._refuse(scope, receive, send, exc.size)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int) -> None:
        body = {
            "error": f"request body of {size:,} bytes is over the limit of {self.limit:,} bytes",
            "status": 413,
        }
        await JSONResponse(body, status_code=413)(scope, receive, send)


class TooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


def safe_next(target: str | None) -> str:
    """Only same-site relative targets after login (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>xraytriage · sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/app.css"></head>
<body class="login"><main class="card narrow"><h1>xraytriage</h1>
<p>This service is protected by an access token.</p>
{error}
<form method="post" action="/login">
<input type="hidden" name="next" value="{next}">
<label>Token <input type="password" name="token" id="token" autocomplete="current-password" required autofocus></label>
<button type="submit" id="sign-in">Sign in</button></form></main></body></html>"""


def login_page(next_target: str, error: str = "") -> HTMLResponse:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return HTMLResponse(
        LOGIN_PAGE.format(next=escape(safe_next(next_target)), error=message),
        status_code=401 if error else 200,
    )


async def login_submit(request: Request, token: str | None) -> Response:
    form = await request.form()
    given = str(form.get("token", ""))
    target = safe_next(str(form.get("next", "/")))
    if not token or token_matches(token, given):
        response = RedirectResponse(target, status_code=303)
        if token:
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict", path="/")
        return response
    return login_page(target, "That token is not right.")


def logout() -> Response:
    """Forget the sign-in cookie and go back to the login page."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
