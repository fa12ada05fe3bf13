"""Rendering: the Jinja2 environment, its filters, the layout's common context and the error pages.

Times are rendered as `<time datetime="ISO">` with a UTC text; `static/app.js` rewrites that text
in the viewer's own time zone, so a page without JavaScript still says UTC and is right.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboards import auth
from dashboards.auth import SESSION_COOKIE
from dashboards.deps import get_session_config
from dashboards.errors import answer_for
from pulsewire.errors import PulsewireError

DASHBOARDS = Path(__file__).resolve().parent.parent
STATIC_DIR = DASHBOARDS / "static"
templates = Jinja2Templates(directory=DASHBOARDS / "templates")
_STATIC_VERSION = str(int(max(p.stat().st_mtime for p in STATIC_DIR.rglob("*") if p.is_file())))
_ERROR_TITLES = {404: "Not found", 403: "Not allowed", 422: "That did not work", 503: "Unavailable"}


def ago(ts: datetime | None) -> str:
    """'3 min ago', '2 h ago', '5 d ago', or a date for anything older than a month."""
    if ts is None:
        return "never"
    seconds = (datetime.now(UTC) - ts).total_seconds()
    if seconds < 0:
        return ts.strftime("%d %b %Y %H:%M")
    for limit, size, unit in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "h"), (30 * 86400, 86400, "d")):
        if seconds < limit:
            return "just now" if unit == "s" else f"{int(seconds // size)} {unit} ago"
    return ts.strftime("%d %b %Y")


def when_text(ts: datetime | None) -> str:
    """A date and time as people read it, in UTC: the text pages show before app.js localises it."""
    return ts.astimezone(UTC).strftime("%a %d %b %Y, %H:%M UTC") if ts else ""


def iso_utc(ts: datetime | None) -> str:
    """The machine-readable instant of a `<time datetime=...>` element."""
    return ts.astimezone(UTC).isoformat() if ts else ""


templates.env.filters["ago"] = ago
templates.env.filters["when_text"] = when_text
templates.env.filters["iso_utc"] = iso_utc
templates.env.globals["static"] = lambda path: f"/static/{path}?v={_STATIC_VERSION}"


def session_cookie(request: Request) -> str:
    """The signed session cookie the browser sent, or ''."""
    return request.cookies.get(SESSION_COOKIE, "")


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A page with the layout's common context (user, CSRF token)."""
    cookie = session_cookie(request)
    config = get_session_config(request)
    base = {"user": None, "csrf_token": auth.csrf_token(config, cookie) if cookie else "", "title": ""}
    return templates.TemplateResponse(request, name, base | context, status_code=status_code)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """The HTML page of an error, with its status."""
    title = _ERROR_TITLES.get(status, "Something went wrong")
    return render(request, "web/error.html", {"title": title, "message": message}, status)


def wants_html(request: Request) -> bool:
    """A browser asking for a page (not the API, not a script)."""
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


Handler = Callable[[Request, Exception], Awaitable[Response]]


def html_for_pages(json_handler: Handler) -> Handler:
    """Wrap an error handler of the API: pages get an HTML error page, /api keeps its JSON."""

    async def http_error(request: Request, exc: Exception) -> Response:
        if wants_html(request):
            if isinstance(exc, StarletteHTTPException):
                return error_page(request, exc.status_code, str(exc.detail))
            if isinstance(exc, PulsewireError):
                answer = answer_for(exc)
                return error_page(request, answer.status, answer.message)
        return await json_handler(request, exc)

    return http_error
