"""Typed dependencies for routes: `Conn` (one transaction per request) and `CurrentPrincipal`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated

import psycopg_pool
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dashboards import access
from dashboards.auth import (
    REFUSED,
    SESSION_COOKIE,
    SessionConfig,
    csrf_valid,
    principal_from_session,
    principal_from_token,
    token_refusal,
)
from dashboards.errors import ApiError
from dashboards.guards import CapReached, ConcurrencyCap
from dashboards.queries import PageRequest
from dashboards.types import AConn, Principal
from pulsewire import db
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
    """A pooled connection inside one transaction: committed when the route returns, else rolled back.

    A driver error raised anywhere in the route passes through here and leaves as a
    `pulsewire.errors` one (`pulsewire.db.converted`): no handler ever sees psycopg's.
    """
    pool: psycopg_pool.AsyncConnectionPool[AConn] = request.app.state.pool
    async with db.borrowed(pool, timeout_s=5) as conn:
        yield conn


# The same, for code that takes a connection only for part of its work (sign-in, live streams).
connection = asynccontextmanager(get_conn)


# "function" scope: the transaction commits before the response leaves, so a client that acts on
# a response always finds its effects, and a streaming response holds no connection.
Conn = Annotated[AConn, Depends(get_conn, scope="function")]


async def get_principal(
    request: Request,
    conn: Conn,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from a bearer token or a web session cookie; 401 otherwise."""
    credential = Credential(token=credentials.credentials if credentials is not None else None)
    if credential.token is None and (cookie := request.cookies.get(SESSION_COOKIE)):
        credential = Credential(cookie=cookie)
        # A browser sends the cookie by itself: a write made with it must also prove it comes from
        # one of our pages (the session's CSRF token in a header), not from another site's form.
        if request.method not in SAFE_METHODS and not csrf_valid(
            get_session_config(request), cookie, request.headers.get(CSRF_HEADER)
        ):
            raise ApiError(403, f"a write with a session cookie needs the {CSRF_HEADER} header")
    principal = await principal_for(conn, get_session_config(request), credential)
    if principal is None:
        message = await token_refusal(conn, credential.token) if credential.token else REFUSED
        raise ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})
    request.state.principal, request.state.credential = principal, credential
    await access.bind(conn, request, principal, token=credential.token)
    return principal


@dataclass(frozen=True)
class Credential:
    """What a request authenticated with: an API token or a session cookie (or neither)."""

    token: str | None = None
    cookie: str | None = None


async def principal_for(conn: AConn, config: SessionConfig, credential: Credential) -> Principal | None:
    """The user a credential stands for now; None when it is unknown, revoked, expired or ended."""
    if credential.token is not None:
        return await principal_from_token(conn, credential.token)
    if credential.cookie:
        return await principal_from_session(conn, config, credential.cookie)
    return None


async def still_valid(request: Request, credential: Credential, principal: Principal) -> bool:
    """Whether the credential still stands for the same principal (a long stream asks every few s).

    A credential that cannot be checked (database unavailable) counts as invalid: fail closed.
    """
    try:
        async with connection(request) as conn:
            return await principal_for(conn, get_session_config(request), credential) == principal
    except DatabaseError:
        return False


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def get_page(
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"at most {MAX_PAGE}")] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> PageRequest:
    """Capped offset pagination parameters."""
    return PageRequest(limit=limit, offset=offset)


Paging = Annotated[PageRequest, Depends(get_page)]


def readings_slot(request: Request, principal: Principal) -> AbstractContextManager[None]:
    """One of the caller's concurrent readings queries; 429 when they all run already."""
    cap: ConcurrencyCap = request.app.state.readings_cap
    return _capped(cap, principal.user_id, "readings queries")


@contextmanager
def _capped(cap: ConcurrencyCap, key: int, what: str) -> Iterator[None]:
    try:
        with cap.slot(key):
            yield
    except CapReached as exc:
        raise ApiError(
            429,
            f"at most {cap.limit} {what} at a time per user: wait for one to finish",
            code="too_many_requests",
            headers={"Retry-After": "1"},
        ) from exc
