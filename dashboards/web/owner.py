"""The owner's page: their devices, their provider's messages and their appointment requests."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashboards import contact
from dashboards.queries import PageRequest, list_devices
from dashboards.web import page_queries
from dashboards.web.render import render
from dashboards.web.session import Conn, PageUser
from dashboards.web.views import RECENT, appointment_view, device_view, user_context

router = APIRouter(include_in_schema=False)
OWNER_DEVICES = PageRequest(limit=50)


@router.get("/my", response_class=HTMLResponse)
async def owner_page(
    *, request: Request, conn: Conn, p: PageUser, notice: str = "", error: str = ""
) -> Response:
    """The owner's devices, their provider's messages and their appointment requests."""
    if p.role != "owner":
        return RedirectResponse("/fleet", status_code=303)
    rows = await list_devices(conn, p, OWNER_DEVICES)
    counts = await page_queries.open_alert_counts(conn, p)
    messages, appointments = [], []
    for row in rows:
        messages += await contact.list_messages(conn, p, row, RECENT)
        appointments += [appointment_view(a) for a in await contact.list_appointments(conn, p, row, RECENT)]
    messages.sort(key=lambda m: m["created_at"], reverse=True)
    appointments.sort(key=lambda a: a["appointment_id"], reverse=True)
    provider = await page_queries.owner_provider_name(conn, p)
    return render(
        request,
        "web/owner.html",
        await user_context(conn, p, "my", "My devices")
        | {
            "devices": [device_view(p, r, counts) for r in rows],
            "messages": messages,
            "appointments": appointments,
            "provider_name": provider,
            "notice": notice[:200],
            "error": error[:300],
        },
    )
