"""Bearer-token protection and request-size limits, as ASGI middleware.

With a token set, every page and API call needs ``Authorization: Bearer <token>`` or the
session cookie the login page sets; ``/healthz`` and the static files stay open (monitors,
the login page's own style). Without a token the service is meant for localhost only (the
default bind), and ``serve`` warns when it is bound elsewhere without one.

The session cookie is not the token: it is ``issued.nonce.mac``, signed with a key derived
from the token (:class:`Sessions`), valid for ``SESSION_SECONDS``, ended by "Sign out" and by
any change of the token; a stolen cookie never reveals the token. Wrong tokens (login form or
bearer header) are limited per client address and in total (:class:`FailureLimit`): past the
limit the answer is 429 with ``Retry-After`` and no token is checked at all.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from html import escape
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xraytriage.errors import TooLarge

COOKIE = "xraytriage_session"
OPEN_PATHS = ("/healthz", "/login", "/logout", "/static/", "/favicon.ico")
SESSION_SECONDS = 12 * 3600


def token_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class Sessions:
    """Signed, expiring session cookies that are not the token (see the module doc)."""

    def __init__(self, token: str, lifetime: float = SESSION_SECONDS) -> None:
        self.key = hmac.new(token.encode(), b"xraytriage session cookie v1", hashlib.sha256).digest()
        self.lifetime = lifetime
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mac(self, payload: str) -> str:
        return hmac.new(self.key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        payload = f"{int(time.time())}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._mac(payload)}"

    def valid(self, cookie: str | None) -> bool:
        if not cookie or cookie.count(".") != 2:
            return False
        issued, nonce, mac = cookie.split(".")
        if not hmac.compare_digest(self._mac(f"{issued}.{nonce}"), mac) or not issued.isdigit():
            return False
        age = time.time() - int(issued)
        with self._lock:
            return -60 <= age <= self.lifetime and nonce not in self._revoked

    def csrf_token(self, cookie: str | None) -> str | None:
        """The CSRF token of this session (None without a valid cookie): bound to the cookie's
        nonce, so it ends with the session; see :mod:`~xraytriage.serving.csrf`."""
        if not self.valid(cookie):
            return None
        return self._mac("csrf." + cookie.split(".")[1])

    def revoke(self, cookie: str | None) -> None:
        """Sign out: this cookie stops working here even if a copy of it survives."""
        if self.valid(cookie):
            issued, nonce, _ = cookie.split(".")
            now = time.time()
            with self._lock:
                self._revoked = {n: t for n, t in self._revoked.items() if t > now}
                self._revoked[nonce] = int(issued) + self.lifetime


class FailureLimit:
    """At most ``per_client`` wrong tokens per client address, and ``overall`` from all
    clients together, in any ``window`` seconds (a token cannot be guessed by brute force)."""

    def __init__(self, per_client: int = 5, overall: int = 50, window: float = 60.0) -> None:
        self.per_client, self.overall, self.window = per_client, overall, window
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def _trim(self, times: deque[float], now: float) -> deque[float]:
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try a token again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            mine = self._trim(self._clients.get(client, deque()), now)
            every = self._trim(self._all, now)
            waits = [
                times[-full] + self.window - now  # when the oldest of the last `full` expires
                for times, full in ((mine, self.per_client), (every, self.overall))
                if len(times) >= full
            ]
            return int(max(waits)) + 1 if waits else 0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._clients.setdefault(client, deque()).append(now)
            self._all.append(now)
            if len(self._clients) > 10_000:  # forget quiet clients rather than grow without bound
                self._clients = {c: t for c, t in self._clients.items() if self._trim(t, now)}


class Guard:
    """What the token middleware and the login page share: the token, sessions, the limit."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.sessions = Sessions(token) if token else None
        self.limit = FailureLimit()


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def bearer_token(scope: Scope) -> str | None:
    auth = _headers(scope).get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def session_cookie(scope: Scope) -> str | None:
    for part in _headers(scope).get("cookie", "").split(";"):
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


def too_many(wait: int, html: bool) -> Response:
    message = f"too many wrong tokens from here; try again in {wait} s"
    headers = {"Retry-After": str(wait)}
    if html:
        return login_page("/", message, status_code=429, headers=headers)
    return JSONResponse({"error": message, "status": 429}, status_code=429, headers=headers)


AUTH_STATE = "xraytriage_auth"


def authenticated_by(scope: Scope) -> str | None:
    """How :class:`TokenAuth` let this request in: ``"none"`` (no token set), ``"open"`` (an
    open path), ``"session"`` (the sign-in cookie) or ``"bearer"``; None when it did not."""
    return scope.get("state", {}).get(AUTH_STATE)


class TokenAuth:
    """Lets a request through when no token is set, for an open path, with a valid session
    cookie or the right bearer token (recording which, see :func:`authenticated_by`);
    answers 401, 429 or a redirect to the login page otherwise."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def _through(self, how: str, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[AUTH_STATE] = how
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = self.guard
        if scope["type"] != "http" or not guard.token:
            await self._through("none", scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/login" or path.startswith(OPEN_PATHS):
            await self._through("open", scope, receive, send)
            return
        if guard.sessions.valid(session_cookie(scope)):
            await self._through("session", scope, receive, send)
            return
        given = bearer_token(scope)
        if given is not None:
            client = client_address(scope)
            wait = guard.limit.retry_after(client)
            if wait:
                await too_many(wait, False)(scope, receive, send)
                return
            if token_matches(guard.token, given):
                await self._through("bearer", scope, receive, send)
                return
            guard.limit.failed(client)
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


def login_page(
    next_target: str, error: str = "", status_code: int | None = None, headers: dict | None = None
) -> HTMLResponse:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    return HTMLResponse(
        LOGIN_PAGE.format(next=escape(safe_next(next_target)), error=message),
        status_code=status_code or (401 if error else 200),
        headers=headers,
    )


async def login_submit(request: Request, guard: Guard) -> Response:
    form = await request.form()
    given = str(form.get("token", ""))
    target = safe_next(str(form.get("next", "/")))
    if not guard.token:
        return RedirectResponse(target, status_code=303)
    client = client_address(request.scope)
    wait = guard.limit.retry_after(client)
    if wait:
        return too_many(wait, True)
    if token_matches(guard.token, given):
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE,
            guard.sessions.issue(),
            max_age=int(guard.sessions.lifetime),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return response
    guard.limit.failed(client)
    return login_page(target, "That token is not right.")


def logout(request: Request, guard: Guard) -> Response:
    """Forget the sign-in cookie (here and in the browser) and go back to the login page."""
    if guard.sessions is not None:
        guard.sessions.revoke(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
