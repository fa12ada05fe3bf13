"""Who is on a page: the session cookie, the page dependencies, CSRF checks and post/redirect/get.

Pages use the signed session cookie of `dashboards.auth`; every form carries the session's CSRF
token. Without a live session a page answers with a redirect to the login form.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from dashboards import access, auth
from dashboards.auth import SESSION_COOKIE, SessionConfig
from dashboards.deps import get_conn, get_session_config
from dashboards.types import AConn, Principal
from dashboards.web.render import session_cookie

# "function" scope: the transaction commits before the response leaves, so the page the browser
# loads next (after a redirect) sees what the form just wrote. The default ("request") commits after
# the response is sent, which races the browser's next request.
Conn = Annotated[AConn, Depends(get_conn, scope="function")]
CsrfField = Annotated[str, Form()]


class LoginRequired(Exception):
    """Raised by page dependencies when there is no live session: answered with a redirect."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


async def login_redirect(request: Request, exc: Exception) -> Response:
    """The answer to LoginRequired: the login form, coming back here afterwards."""
    assert isinstance(exc, LoginRequired)
    return RedirectResponse(f"/login?next={quote(exc.next_path)}", status_code=303)


async def page_principal(request: Request, conn: Conn) -> Principal:
    """The signed-in user of a page; otherwise a redirect to the login form."""
    cookie = session_cookie(request)
    principal = None
    if cookie:
        principal = await auth.principal_from_session(conn, get_session_config(request), cookie)
    if principal is None:
        raise LoginRequired(request.url.path)
    request.state.principal = principal
    await access.bind(conn, request, principal)
    return principal


PageUser = Annotated[Principal, Depends(page_principal)]


def check_csrf(request: Request, token: str) -> None:
    """403 unless the form's token belongs to this session."""
    if not auth.csrf_valid(get_session_config(request), session_cookie(request), token):
        raise HTTPException(403, "the form expired: reload the page and try again")


def back_to(path: str, notice: str | None = None, *, error: str | None = None) -> RedirectResponse:
    """Post/redirect/get: back to a page, with an optional one-line notice or error."""
    query = f"?notice={quote(notice)}" if notice else f"?error={quote(error)}" if error else ""
    return RedirectResponse(path + query, status_code=303)


def set_session_cookie(response: Response, config: SessionConfig, cookie: str) -> None:
    """Attach the session cookie: HttpOnly, SameSite=Lax, Secure when configured."""
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(config.ttl.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=config.secure_cookies,
        path="/",
    )


def clear_session_cookie(response: Response, config: SessionConfig) -> None:
    """Remove the session cookie from the browser."""
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=config.secure_cookies
    )
