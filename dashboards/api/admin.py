"""Operator views: the quarantine."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dashboards.api import API_PREFIX
from dashboards.api.common import page_of
from dashboards.deps import Conn, CurrentPrincipal, Paging
from dashboards.models import Page, QuarantinePublic
from dashboards.queries import Row, quarantine

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
