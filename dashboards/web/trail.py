"""The access audit page: who read or did what, filtered by patient (owner), actor and time.

Admins see the whole trail; provider staff the entries about their own patients. Both go through
the API's `audit_trail`, so the page and `GET /api/v1/audit` cannot disagree on who sees what.
Like the API, reading the trail is not itself an entry: the trail names owners by id only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from dashboards.api.audit import audit_trail
from dashboards.web.contact import parse_slot
from dashboards.web.render import render
from dashboards.web.session import Conn, PageUser
from dashboards.web.views import user_context
from pulsewire import audit
from pulsewire.errors import Forbidden, InvalidInput

router = APIRouter(include_in_schema=False)
READERS = ("admin", "provider_staff")
ENTRIES_SHOWN = 100
# Form fields arrive as text: an empty box is "any", not a 422.
Field = Annotated[str, Query(max_length=40)]


def _id_or_none(text: str, label: str, errors: list[str]) -> int | None:
    text = text.strip()
    if not text:
        return None
    if text.isdigit() and 0 < int(text) < 2**63:
        return int(text)
    errors.append(f"{label}: give a number, such as 12.")
    return None


def _instant_or_none(text: str, label: str, errors: list[str]) -> datetime | None:
    if not text.strip():
        return None
    try:
        return parse_slot(text.strip())
    except InvalidInput:
        errors.append(f"{label}: give a date and time.")
        return None


def entry_view(row: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of an entry; a device the viewer may open is linked."""
    return row | {
        "route": str(row["detail"].get("route", "")),
        "device_href": f"/devices/{row['object_id']}"
        if row["object_type"] in ("device", "fhir", "vss") and row["object_id"]
        else None,
    }


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    *,
    request: Request,
    conn: Conn,
    p: PageUser,
    owner_id: Field = "",
    actor_user_id: Field = "",
    start: Field = "",
    end: Field = "",
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> Response:
    """The trail, newest first; a patient's or actor's id in a row filters by it."""
    if p.role not in READERS:
        raise Forbidden("the access audit is for admins and the patients' provider")
    errors: list[str] = []
    q = audit.TrailQuery(
        owner_id=_id_or_none(owner_id, "Patient", errors),
        actor_user_id=_id_or_none(actor_user_id, "Actor", errors),
        start=_instant_or_none(start, "From", errors),
        end=_instant_or_none(end, "Until", errors),
        limit=ENTRIES_SHOWN,
        offset=offset,
    )
    rows = [] if errors else await audit_trail(conn, p, q)
    kept: dict[str, str] = {
        k: str(v) for k, v in (("owner_id", q.owner_id), ("actor_user_id", q.actor_user_id)) if v
    }
    kept |= {k: v.isoformat() for k, v in (("start", q.start), ("end", q.end)) if v}
    older = urlencode(kept | {"offset": offset + ENTRIES_SHOWN}) if len(rows) == ENTRIES_SHOWN else None
    return render(
        request,
        "web/audit.html",
        await user_context(conn, p, "audit", "Access audit")
        | {
            "entries": [entry_view(r) for r in rows],
            "q": q,
            "errors": errors,
            "older_query": older,
            "filtered": bool(kept),
        },
    )
