"""Signing in and out, and where `/` leads.

Before login there is no session to bind a CSRF token to: a random nonce in a short-lived cookie
stands in for it (double submit, signed), so a foreign site cannot log a user in. Failed attempts
are throttled per account and per client address (429 with Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashboards import access, auth
from dashboards.deps import connection, get_session_config
from dashboards.guards import LoginGuard
from dashboards.web.render import render, session_cookie
from dashboards.web.session import (
    Conn,
    CsrfField,
    PageUser,
    back_to,
    check_csrf,
    clear_session_cookie,
    set_session_cookie,
)
from pulsewire import audit

router = APIRouter(include_in_schema=False)
LOGIN_COOKIE = "pw_login"


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
    """Check the password, start a session, go where the user was heading."""
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
            await audit.record(conn, *access.sign_in(request, principal, email))
            if principal is None:
                guard.failed(email, address)
                return _login_page(
                    request, next=next, email=email, status=401, error="Wrong e-mail or password."
                )
            config = get_session_config(request)
            cookie = await auth.create_session(conn, config, principal.user_id)
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(response, config, cookie)
    response.delete_cookie(LOGIN_COOKIE, path="/login", samesite="lax", secure=config.secure_cookies)
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
    await auth.end_session(conn, config, session_cookie(request))
    response = back_to("/login", "You are signed out.")
    clear_session_cookie(response, config)
    return response


def _login_page(
    request: Request, *, next: str, email: str = "", error: str = "", notice: str = "", status: int = 200
) -> HTMLResponse:
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
