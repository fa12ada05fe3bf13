"""The access audit trail: admins query all of it, a provider the entries about its own patients."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from dashboards.api import API_PREFIX
from dashboards.api.common import page_of
from dashboards.deps import Conn, CurrentPrincipal, Paging
from dashboards.models import Page
from dashboards.types import AConn, Principal, Row
from pulsewire import audit
from pulsewire.errors import Forbidden

router = APIRouter(prefix=API_PREFIX, tags=["audit"])


class AuditEntryPublic(BaseModel):
    """One access audit entry: who did what to which object, concerning whom, from where, when."""

    audit_id: int
    at: datetime
    actor_user_id: int | None
    actor_label: str
    org_id: int | None
    role: str | None
    credential: str | None
    action: str
    object_type: str
    object_id: str | None
    owner_id: int | None
    client_addr: str | None
    detail: dict[str, Any]


async def audit_trail(conn: AConn, p: Principal, q: audit.TrailQuery) -> list[Row]:
    """The entries `p` may read: all for an admin, its own patients' for provider staff."""
    if p.role == "admin":
        return await audit.trail(conn, q)
    if p.role == "provider_staff" and p.org_id is not None:
        return await audit.trail(conn, replace(q, provider_org_id=p.org_id))
    raise Forbidden(f"a {p.role} may not read the access audit")


@router.get("/audit")
async def get_audit(
    *,
    principal: CurrentPrincipal,
    conn: Conn,
    page: Paging,
    owner_id: int | None = None,
    actor_user_id: int | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Page[AuditEntryPublic]:
    """Who read or did what, newest first, by patient (owner), actor and time (admins; providers for
    their own patients)."""
    q = audit.TrailQuery(owner_id, actor_user_id, start, end, limit=page.limit, offset=page.offset)
    rows = await audit_trail(conn, principal, q)
    return page_of(rows, page, AuditEntryPublic.model_validate)
