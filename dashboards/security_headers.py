"""Security headers on every response: CSP, frame denial, nosniff, Referrer-Policy, and HSTS on TLS.

A plain ASGI middleware (not `BaseHTTPMiddleware`): it only adds headers to `http.response.start`,
so streamed answers such as the live alert stream pass through untouched.

The pages load scripts and styles from `/static` only, so the policy allows no inline script or
style. The interactive API docs (`/docs`, `/redoc`) are FastAPI's pages, which load Swagger UI or
ReDoc from a CDN with an inline bootstrap script; they get a policy of their own that allows that
and nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CDN = "https://cdn.jsdelivr.net"

PAGE_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
DOCS_POLICY = "; ".join(
    (
        "default-src 'self'",
        f"script-src 'self' 'unsafe-inline' {_CDN}",
        f"style-src 'self' 'unsafe-inline' {_CDN}",
        f"img-src 'self' data: {_CDN} https://fastapi.tiangolo.com",
        f"worker-src 'self' blob: {_CDN}",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
# Two years, the preload list's minimum; only sent on a request that arrived over HTTPS.
HSTS = "max-age=63072000; includeSubDomains"
_COMMON = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class SecurityHeaders:
    """ASGI middleware adding the security headers to every HTTP response (unless already set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = headers_for(str(scope.get("path", "")), https=scope.get("scheme") == "https")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                added = [(name, value) for name, value in extra if name not in present]
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def headers_for(path: str, *, https: bool) -> list[tuple[bytes, bytes]]:
    """The headers of an answer to `path`; HSTS only when the request came over HTTPS."""
    policy = DOCS_POLICY if path in DOCS_PATHS else PAGE_POLICY
    headers: Iterable[tuple[bytes, bytes]] = ((b"content-security-policy", policy.encode()), *_COMMON)
    if https:
        headers = (*headers, (b"strict-transport-security", HSTS.encode()))
    return list(headers)
