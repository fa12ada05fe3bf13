"""Typed dependencies for routes: `Conn` (one transaction per request) and `CurrentPrincipal`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import psycopg
import psycopg_pool
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dashboards.auth import (
    REFUSED,
    SESSION_COOKIE,
    Principal,
    SessionConfig,
    csrf_valid,
    principal_from_session,
    principal_from_token,
    token_refusal,
)
from dashboards.errors import ApiError
from dashboards.queries import AConn, PageRequest
from pulsewire.errors import DatabaseError

MAX_PAGE = 500
_bearer = HTTPBearer(
    auto_error=False, description="an API token (`pulsewire users add` or POST /api/v1/tokens)"
)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"


def get_session_config(request: Request) -> SessionConfig:
    """How web sessions are signed."""
    config: SessionConfig = request.app.state.session_config
    return config


async def get_conn(request: Request) -> AsyncIterator[AConn]:
    """A pooled connection inside one transaction: committed when the route returns, else rolled back."""
    pool: psycopg_pool.AsyncConnectionPool[AConn] = request.app.state.pool
    try:
        async with pool.connection(timeout=5) as conn:
            yield conn
    except (psycopg_pool.PoolTimeout, psycopg.OperationalError) as exc:
        raise DatabaseError(f"database unavailable: {exc}") from exc


# "function" scope: the transaction commits before the response leaves, so a client that acts on
# a response always finds its effects, and a streaming response holds no connection.
Conn = Annotated[AConn, Depends(get_conn, scope="function")]


async def get_principal(
    request: Request,
    conn: Conn,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from a bearer token or a web session cookie; 401 otherwise."""
    principal = None
    if credentials is not None:
        principal = await principal_from_token(conn, credentials.credentials)
    elif cookie := request.cookies.get(SESSION_COOKIE):
        config = get_session_config(request)
        # A browser sends the cookie by itself: a write made with it must also prove it comes from
        # one of our pages (the session's CSRF token in a header), not from another site's form.
        if request.method not in SAFE_METHODS and not csrf_valid(
            config, cookie, request.headers.get(CSRF_HEADER)
        ):
            raise ApiError(403, f"a write with a session cookie needs the {CSRF_HEADER} header")
        principal = await principal_from_session(conn, config, cookie)
    if principal is None:
        token = credentials.credentials if credentials is not None else None
        message = await token_refusal(conn, token) if token else REFUSED
        raise ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
    request.state.principal = principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def get_page(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"at most {MAX_PAGE}")] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> PageRequest:
    """Capped offset pagination parameters."""
    return PageRequest(limit=limit, offset=offset)


Paging = Annotated[PageRequest, Depends(get_page)]
