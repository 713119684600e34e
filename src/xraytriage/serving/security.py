"""Browser-facing hardening, as ASGI middleware: security headers and the Host header check.

- **Headers** on every answer: a Content-Security-Policy that allows only this server's own
  scripts, styles and pictures (no inline script, no framing: ``frame-ancestors 'none'`` and
  ``X-Frame-Options: DENY`` against click-jacking), ``nosniff`` and no referrer. A handler that
  needs more (the API docs' one inline script, allowed by its hash) sets its own policy.
- **Host check** (DNS rebinding): a web page on ``evil.example`` whose name an attacker points
  at 127.0.0.1 makes the browser send its requests to this service with ``Host:
  evil.example``. Without a token nothing else stops them, so only the loopback names, the
  bound address and the names given with ``serve --allowed-host`` are answered. With a token
  the check applies only when allowed hosts are given: the browser does not send the session
  cookie to a foreign name, and a network service is reached by names this side cannot guess.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("", "0.0.0.0", "::")
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def csp_with_inline_scripts(html: str, relaxed_styles: bool = True) -> str:
    """The policy, allowing exactly the inline scripts of ``html`` (by their SHA-256)."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for body in INLINE_SCRIPT.findall(html)
    ]
    policy = CSP.replace("script-src 'self'", "script-src 'self' " + " ".join(hashes))
    if relaxed_styles:
        policy = policy.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
    return policy


class SecurityHeaders:
    """Adds :data:`HEADERS` to every HTTP answer that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self.headers if k not in have]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def host_name(value: str) -> str:
    """``"Example.org:8000"`` -> ``"example.org"``; ``"[::1]:8000"`` -> ``"::1"``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allowed_host_names(bind_host: str, configured: Iterable[str]) -> frozenset[str]:
    names = {*LOOPBACK_NAMES, *(host_name(h) for h in configured if h.strip())}
    if bind_host not in ANY_ADDRESS:
        names.add(host_name(bind_host))
    return frozenset(names)


class HostCheck:
    """Answers 400 to a request whose Host header is not one of ``allowed`` (see module doc)."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allowed is None or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
        if host_name(host) in self.allowed:
            await self.app(scope, receive, send)
            return
        names = ", ".join(sorted(self.allowed))
        body = {
            "error": f"Host {host[:100]!r} is not served here (DNS rebinding protection); this service "
            f"answers to {names}. Start it with --allowed-host NAME to add a name.",
            "status": 400,
        }
        await JSONResponse(body, status_code=400)(scope, receive, send)
