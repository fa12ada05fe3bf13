"""The web dashboard: server-rendered pages (Jinja2) on top of the same scoped queries as the API.

`install(app)` mounts the pages, the static files and the HTML error pages. Pages use the signed
session cookie of `dashboards.auth`; every form carries the session's CSRF token. Charts and the
live alert inbox call the REST API from the browser with that same cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboards import auth, web_queries
from dashboards.auth import SESSION_COOKIE, Principal
from dashboards.deps import connection, get_conn, get_session_config
from dashboards.guards import LoginGuard
from dashboards.queries import AConn, PageRequest, sees_owner_data

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)
# "function" scope: the transaction commits before the response leaves, so the page the browser
# loads next (after a redirect) sees what the form just wrote. The default ("request") commits after
# the response is sent, which races the browser's next request.
Conn = Annotated[AConn, Depends(get_conn, scope="function")]
LOGIN_COOKIE = "pw_login"
RECENT = PageRequest(limit=20)
_STATIC_VERSION = str(int(max(p.stat().st_mtime for p in (HERE / "static").rglob("*") if p.is_file())))


class LoginRequired(Exception):
    """Raised by page dependencies when there is no live session: answered with a redirect."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def install(app: FastAPI) -> None:
    """Add the pages, /static and HTML error pages (JSON stays the answer under /api)."""
    from dashboards import web_contact, web_pages

    app.include_router(router)
    app.include_router(web_pages.router)
    app.include_router(web_contact.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_exception_handler(LoginRequired, _login_redirect)
    # Wrap the HTTP error handlers the API installed: pages get HTML, /api keeps its JSON.
    for key in (StarletteHTTPException, HTTPException):
        if key in app.exception_handlers:
            app.add_exception_handler(key, _html_for_pages(app.exception_handlers[key]))


def _html_for_pages(json_handler: Callable[..., Any]) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def http_error(request: Request, exc: Exception) -> Response:
        if _wants_html(request) and isinstance(exc, StarletteHTTPException):
            return _error_page(request, exc.status_code, str(exc.detail))
        answer = json_handler(request, exc)
        return cast(Response, await answer if inspect.isawaitable(answer) else answer)

    return http_error


# ---- helpers -------------------------------------------------------------------------------------


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


templates.env.filters["ago"] = ago
templates.env.globals["static"] = lambda path: f"/static/{path}?v={_STATIC_VERSION}"


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


def _session_cookie(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A page with the layout's common context (user, CSRF token)."""
    cookie = _session_cookie(request)
    config = get_session_config(request)
    base = {"user": None, "csrf_token": auth.csrf_token(config, cookie) if cookie else "", "title": ""}
    return templates.TemplateResponse(request, name, base | context, status_code=status_code)


def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    titles = {404: "Not found", 403: "Not allowed", 422: "That did not work", 503: "Unavailable"}
    return render(
        request,
        "web/error.html",
        {"title": titles.get(status, "Something went wrong"), "message": message},
        status,
    )


async def _login_redirect(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)


async def page_principal(request: Request, conn: Conn) -> Principal:
    """The signed-in user of a page; otherwise a redirect to the login form."""
    cookie = _session_cookie(request)
    principal = None
    if cookie:
        principal = await auth.principal_from_session(conn, get_session_config(request), cookie)
    if principal is None:
        raise LoginRequired(request.url.path)
    request.state.principal = principal
    return principal


PageUser = Annotated[Principal, Depends(page_principal)]


async def user_context(conn: Conn, p: Principal, nav: str, title: str) -> dict[str, Any]:
    """What the layout shows of the user: name, org, open alert count for the nav."""
    org_name = await web_queries.org_name(conn, p.org_id)
    counts = await web_queries.open_alert_totals(conn, p)
    return {
        "user": {"display_name": p.display_name, "role": p.role, "org_name": org_name},
        "nav": nav,
        "title": title,
        "open_alerts": counts["red"] + counts["yellow"],
    }


def check_csrf(request: Request, token: str) -> None:
    """403 unless the form's token belongs to this session."""
    if not auth.csrf_valid(get_session_config(request), _session_cookie(request), token):
        raise HTTPException(403, "the form expired: reload the page and try again")


def back_to(path: str, notice: str | None = None, *, error: str | None = None) -> RedirectResponse:
    """Post/redirect/get: back to a page, with an optional one-line notice or error."""
    query = f"?notice={quote(notice)}" if notice else f"?error={quote(error)}" if error else ""
    return RedirectResponse(path + query, status_code=303)


CsrfField = Annotated[str, Form()]


# ---- login ---------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def home(p: PageUser) -> RedirectResponse:
    """Owners land on their own page, staff on the fleet."""
    return RedirectResponse("/my" if p.role == "owner" else "/fleet", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/", notice: str = "") -> HTMLResponse:
    """The sign-in form."""
    return _login_page(request, next=next, notice=notice)


@router.post("/login", response_class=HTMLResponse)
async def login(
    *,
    request: Request,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: CsrfField = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Check the password, start a session, go where the user was heading.

    Failed attempts are throttled per account and per client address (429 with Retry-After).
    """
    if not _login_csrf_valid(request, csrf_token):
        return _login_page(
            request, next=next, email=email, status=403, error="The sign-in form expired. Please try again."
        )
    guard: LoginGuard = request.app.state.login_guard
    address = request.client.host if request.client else "unknown"
    if (wait_s := guard.retry_after_s(email, address)) is not None:
        return _throttled(request, next, email, wait_s)
    # No pooled connection is held while waiting for an argon2 slot: a burst of sign-ins must not
    # starve the rest of the API.
    async with guard.argon2_slots:
        if (wait_s := guard.retry_after_s(email, address)) is not None:  # a burst queued behind us
            return _throttled(request, next, email, wait_s)
        async with connection(request) as conn:
            principal = await auth.principal_from_login(conn, email, password) if email and password else None
            if principal is None:
                guard.failed(email, address)
                return _login_page(
                    request, next=next, email=email, status=401, error="Wrong e-mail or password."
                )
            config = get_session_config(request)
            cookie = await auth.create_session(conn, config, principal.user_id)
    response = RedirectResponse(_safe_next(next), status_code=303)
    auth.set_session_cookie(response, config, cookie)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


def _throttled(request: Request, next: str, email: str, wait_s: int) -> Response:
    minutes = max(1, round(wait_s / 60))
    response = _login_page(
        request,
        next=next,
        email=email,
        status=429,
        error=f"Too many failed sign-ins. Try again in about {minutes} min.",
    )
    response.headers["Retry-After"] = str(wait_s)
    return response


@router.post("/logout")
async def logout(request: Request, conn: Conn, csrf_token: CsrfField = "") -> Response:
    """End the session on the server and in the browser."""
    check_csrf(request, csrf_token)
    config = get_session_config(request)
    await auth.end_session(conn, config, _session_cookie(request))
    response = back_to("/login", "You are signed out.")
    auth.clear_session_cookie(response, config)
    return response


def _login_page(
    request: Request, *, next: str, email: str = "", error: str = "", notice: str = "", status: int = 200
) -> HTMLResponse:
    # Before login there is no session to bind a CSRF token to: a random nonce in a short-lived
    # cookie stands in for it (double submit, signed), so a foreign site cannot log a user in.
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
    response = render(
        request,
        "web/login.html",
        {
            "title": "Sign in",
            "next": _safe_next(next),
            "email": email,
            "error": error,
            "notice": notice,
            "csrf_token": _login_token(request, nonce),
        },
        status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="lax",
        path="/login",
        secure=get_session_config(request).secure_cookies,
    )
    return response


def _login_token(request: Request, nonce: str) -> str:
    mac = hmac.new(get_session_config(request).secret, b"login:" + nonce.encode(), hashlib.sha256)
    return mac.hexdigest()


def _login_csrf_valid(request: Request, token: str) -> bool:
    nonce = request.cookies.get(LOGIN_COOKIE)
    return bool(nonce and token) and hmac.compare_digest(_login_token(request, nonce or ""), token)


def _safe_next(path: str) -> str:
    # Only local paths: an open redirect would let a phishing link bounce through our login.
    return path if path.startswith("/") and not path.startswith("//") else "/"


def when_text(ts: datetime | None) -> str:
    """A date and time as people read it, in UTC (the forms ask in UTC too)."""
    return ts.astimezone(UTC).strftime("%a %d %b %Y, %H:%M UTC") if ts else ""


def appointment_view(row: dict[str, Any]) -> dict[str, Any]:
    """An appointment as both sides see it: the slot that is currently on the table."""
    slot = (
        row["proposed_for"]
        if row["status"] in ("proposed", "confirmed") and row["proposed_for"]
        else row["requested_for"]
    )
    status_text = {
        "requested": "Waiting for your provider to confirm.",
        "proposed": "Your provider proposed this time.",
        "confirmed": "Confirmed.",
        "declined": "Declined by your provider.",
        "cancelled": "Cancelled.",
    }[row["status"]]
    return {
        "appointment_id": row["appointment_id"],
        "device_id": row["device_id"],
        "status": row["status"],
        "slot_text": when_text(slot),
        "reason": row["reason"],
        "note": row["note"],
        "status_text": status_text,
    }


def device_view(p: Principal, row: dict[str, Any], counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What a page shows of a device; the owner's name only to those who may see it."""
    return {
        "device_id": row["device_id"],
        "kind": row["kind"],
        "model": row["model"],
        "serial": row["serial"],
        "firmware": row["firmware"],
        "online": row["online"],
        "last_seen_at": row["last_seen_at"],
        "owner_name": row["owner_full_name"] if sees_owner_data(p) else None,
        "open_alerts": counts.get(str(row["device_id"]), dict.fromkeys(web_queries.SEVERITIES, 0)),
    }
