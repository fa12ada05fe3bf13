"""Operator views and acts (admins): the quarantine, users (disable, enable), device decommissioning."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from dashboards import accounts, registration
from dashboards.api import API_PREFIX
from dashboards.api.common import BigId, page_of
from dashboards.deps import Conn, CurrentPrincipal, Paging
from dashboards.models import DecommissionPublic, Page, QuarantinePublic, UserPublic
from dashboards.queries import quarantine
from dashboards.types import Row

router = APIRouter(prefix=API_PREFIX, tags=["admin"])


def _quarantined(row: Row) -> QuarantinePublic:
    payload = bytes(row["payload"]).decode("utf-8", errors="replace")
    return QuarantinePublic.model_validate(row | {"payload": payload})


@router.get("/quarantine")
async def list_quarantine(
    principal: CurrentPrincipal,
    conn: Conn,
    page: Paging,
    reason: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[QuarantinePublic]:
    """Messages set aside by ingest, newest first, with the reason (admins only)."""
    rows = await quarantine(conn, principal, page, reason=reason)
    return page_of(rows, page, _quarantined)


@router.get("/users")
async def list_users(principal: CurrentPrincipal, conn: Conn, page: Paging) -> Page[UserPublic]:
    """Every user, with when they were disabled (admins only)."""
    rows = await accounts.list_users(conn, principal, page)
    return page_of(rows, page, UserPublic.model_validate)


@router.post("/users/{user_id}/disable")
async def disable_user(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, user_id: BigId
) -> UserPublic:
    """Disable a user: their sessions end and their tokens are refused at once (admins only)."""
    row = await accounts.set_disabled(request.app.state, conn, principal, user_id, disabled=True)
    return UserPublic.model_validate(row)


@router.post("/users/{user_id}/enable")
async def enable_user(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, user_id: BigId
) -> UserPublic:
    """Enable a disabled user again: their tokens work again; they sign in anew (admins only)."""
    row = await accounts.set_disabled(request.app.state, conn, principal, user_id, disabled=False)
    return UserPublic.model_validate(row)


@router.post("/devices/{device_id}/decommission")
async def decommission_device(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, device_id: str
) -> DecommissionPublic:
    """Retire a device for good: no broker login, no commands; its history stays (admins only)."""
    return await registration.decommission_device(request.app.state, conn, principal, device_id)
