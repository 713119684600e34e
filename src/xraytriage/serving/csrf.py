"""Cross-site request forgery: state-changing requests a browser sends must come from our pages.

``SameSite=Strict`` keeps the session cookie away from other *sites*, but a page on another
port of the same host (or a sibling subdomain) is the same site: its form or ``fetch`` to
``/api/v1/images`` arrives with the cookie. So every request that is not GET/HEAD/OPTIONS,
unless it carries the bearer token (programs; a browser never adds it on its own):

- is refused (403) when the browser says it comes from elsewhere: ``Sec-Fetch-Site`` other
  than ``same-origin``/``none``, or (from a browser that does not send that header) an
  ``Origin`` that is not this service's own (our pages' ``no-referrer`` policy makes
  Chromium send ``Origin: null`` on a same-origin form, hence Sec-Fetch-Site first);
- with the session cookie, must also carry the session's CSRF token (``X-CSRF-Token`` header,
  or ``csrf_token`` in the query string for the upload page's no-script form): an HMAC of the
  cookie's nonce (:meth:`~xraytriage.serving.auth.Sessions.csrf_token`) that the pages embed
  and their scripts send, and that another origin cannot read.

Without a token (loopback only) there is no session; the Origin / Sec-Fetch-Site check still
stops a page on another loopback port from uploading or changing a study.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from xraytriage.serving.auth import Guard, authenticated_by, session_cookie

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADER = "x-csrf-token"
FIELD = "csrf_token"
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def own_host(scope: Scope) -> str:
    """``host[:port]`` as the client addressed us (the Host header). Only the host and port
    of an Origin are compared: behind a TLS-terminating proxy the scheme differs."""
    return (_header(scope, b"host") or "").strip().lower()


def foreign_reason(scope: Scope) -> str | None:
    """Why the browser's own headers say this request comes from another origin; None if not."""
    site = _header(scope, b"sec-fetch-site")
    if site is not None:  # set by the browser itself; with it, Origin may be "null" (no-referrer)
        return None if site.lower() in ALLOWED_FETCH_SITES else f"Sec-Fetch-Site: {site[:40]}"
    origin = _header(scope, b"origin")
    if origin is not None and urlsplit(origin.strip().lower()).netloc != own_host(scope):
        return f"Origin {origin[:100]!r} is not this service"
    return None


def sent_token(scope: Scope) -> str | None:
    given = _header(scope, HEADER.encode())
    if given:
        return given
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(FIELD)
    return values[0] if values else None


class CsrfCheck:
    """ASGI middleware inside :class:`~xraytriage.serving.auth.TokenAuth` (see the module doc)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        how = authenticated_by(scope)
        if how != "bearer":
            problem = foreign_reason(scope)
            if problem is None and how == "session":
                expected = self.guard.sessions.csrf_token(session_cookie(scope))
                given = sent_token(scope)
                if expected is None or given is None or not hmac.compare_digest(expected, given):
                    problem = "the page's CSRF token is missing or wrong (reload the page)"
            if problem is not None:
                body = {
                    "error": f"cross-site request refused: {problem}. Use this service's own pages, "
                    "or send 'Authorization: Bearer <token>'",
                    "status": 403,
                }
                await JSONResponse(body, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)
