"""Staff pages: the fleet overview, the alert inbox (with ack/resolve) and the device page.

Vendors see their devices' technical side only: no owner names, no clinical charts or alerts,
which the scoped queries (`dashboards.queries`, `relay.visibility`) already guarantee.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from dashboards import access, contact, queries, relay_bridge
from dashboards.queries import PageRequest, alert_provider_org, list_devices, sees_owner_data, visible_device
from dashboards.web import page_queries
from dashboards.web.render import render
from dashboards.web.session import Conn, CsrfField, PageUser, check_csrf
from dashboards.web.views import (
    RECENT,
    UNITS,
    alert_view,
    appointment_view,
    device_view,
    sentence,
    user_context,
)
from pulsewire import audit
from pulsewire.errors import Forbidden, NotFound
from relay import store

router = APIRouter(include_in_schema=False)
FLEET_LIMIT = 500
ALERT_FILTERS = ("open", "acknowledged", "resolved", "all")
ACTORS = ("provider_staff", "admin")  # who triages alerts (docs/domain.md, "Who may see what")
EVENTS_SHOWN = 50
ALERTS_SHOWN = 50


# ---- staff pages ---------------------------------------------------------------------------------


@router.get("/fleet", response_class=HTMLResponse)
async def fleet(request: Request, conn: Conn, p: PageUser) -> Response:
    """Every device in the viewer's scope with its status and open alerts."""
    if p.role == "owner":
        return RedirectResponse("/my", status_code=303)
    rows = await list_devices(conn, p, PageRequest(limit=FLEET_LIMIT))
    counts = await page_queries.open_alert_counts(conn, p)
    devices = [device_view(p, r, counts) for r in rows]
    scope = {"provider_staff": "in your care", "vendor_staff": "made by your company"}
    return render(
        request,
        "web/fleet.html",
        await user_context(conn, p, "fleet", "Fleet")
        | {
            "devices": devices,
            "show_owner": sees_owner_data(p),
            "online_count": sum(1 for d in devices if d["online"]),
            "totals": await page_queries.open_alert_totals(conn, p),
            "scope_text": scope.get(p.role, "registered"),
        },
    )


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, conn: Conn, p: PageUser, state: str = "open") -> Response:
    """The alert inbox: filter by state; rows arrive live over SSE."""
    if p.role == "owner":
        return RedirectResponse("/my", status_code=303)
    state = state if state in ALERT_FILTERS else "open"
    rows = await page_queries.list_alerts(conn, p, state=None if state == "all" else state)
    await _record_alert_read(conn, p, "alert_list", None, rows)
    return render(
        request,
        "web/alerts.html",
        await user_context(conn, p, "alerts", "Alerts")
        | {
            "alerts": [alert_view(p, r) for r in rows],
            "state": state,
            "can_act": p.role in ACTORS,
        },
    )


@router.get("/rules", response_class=HTMLResponse)
async def rules_page(
    request: Request, conn: Conn, p: PageUser, org_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None
) -> Response:
    """The provider's rules (defaults and its own) with the errors recorded on them; admins pick the org."""
    if p.role not in ACTORS:
        raise Forbidden("rules are set by the provider's staff")
    context = await user_context(conn, p, "rules", "Rules")
    org = p.org_id if p.role == "provider_staff" else org_id
    if org is None:
        return render(request, "web/rules.html", context | {"orgs": await queries.provider_org_ids(conn)})
    rows = await relay_bridge.call(request.app.state.sync_pool, store.list_rules, org)
    failing = sum(1 for r in rows if r["error_count"])
    return render(request, "web/rules.html", context | {"rules": rows, "failing": failing, "orgs": []})


# ---- device page ---------------------------------------------------------------------------------


def event_summary(data: dict[str, Any]) -> str:
    """A short 'key value' line of an event's data."""
    return ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in list(data.items())[:4])


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_page(
    *, request: Request, conn: Conn, p: PageUser, device_id: str, notice: str = "", error: str = ""
) -> Response:
    """Charts over 24 h / 7 d / 30 d, alert history, events; for the provider, owner contact."""
    row = await visible_device(conn, p, device_id)
    counts = await page_queries.open_alert_counts(conn, p)
    metrics = await page_queries.chart_metrics(conn, p, row)
    events = await queries.events(conn, p, device_id, PageRequest(limit=EVENTS_SHOWN))
    alerts = await page_queries.list_alerts(conn, p, state=None, device_id=device_id, limit=ALERTS_SHOWN)
    can_message = p.role in ("provider_staff", "admin") and row["owner_id"] is not None
    context = await user_context(conn, p, "my" if p.role == "owner" else "fleet", device_id)
    return render(
        request,
        "web/device.html",
        context
        | {
            "device": device_view(p, row, counts),
            "notice": notice[:200],
            "error": error[:300],
            "metrics": [
                {"name": m.name, "label": sentence(m.description), "unit": UNITS.get(m.unit, m.unit)}
                for m in metrics
            ],
            "metrics_json": json.dumps([m.name for m in metrics]),
            "events": [
                {"ts": e["ts"], "type": e["type"], "summary": event_summary(e["data"])} for e in events
            ],
            "alerts": [alert_view(p, a) for a in alerts],
            "state": "all",
            "can_act": p.role in ACTORS,
            "can_message": can_message,
            "messages": await contact.list_messages(conn, p, row, RECENT) if can_message else [],
            "appointments": [
                appointment_view(a) for a in await contact.list_appointments(conn, p, row, RECENT)
            ]
            if can_message
            else [],
            "back_href": "/my" if p.role == "owner" else "/fleet",
            "back_label": "← My devices" if p.role == "owner" else "← Fleet",
        },
    )


@router.post("/alerts/{alert_id}/{action}")
async def alert_action(
    *,
    request: Request,
    conn: Conn,
    p: PageUser,
    alert_id: int,
    action: Literal["ack", "resolve"],
    csrf_token: CsrfField = "",
) -> Response:
    """Acknowledge or resolve from a page: JSON for alerts.js, otherwise back to the inbox.

    The change goes through `relay.store`, as the API's does (history row, outbox, live notice).
    """
    check_csrf(request, csrf_token)
    await _visible_alert(conn, p, alert_id)
    if p.role not in ACTORS:
        raise Forbidden("only the provider's staff triage alerts")
    org = p.org_id if p.role == "provider_staff" else await alert_provider_org(conn, alert_id)
    change = store.acknowledge if action == "ack" else store.resolve
    await relay_bridge.call(request.app.state.sync_pool, change, org, alert_id, p.user_id)
    row = await _visible_alert(conn, p, alert_id)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(jsonable_encoder(alert_view(p, row)))
    return RedirectResponse(_local(request.headers.get("referer", "")), status_code=303)


@router.get("/alerts/{alert_id}/row")
async def alert_row(*, conn: Conn, p: PageUser, alert_id: int) -> JSONResponse:
    """One alert as the tables show it, for alerts.js: a live vendor row gets its device link here
    (the vendor's stream view carries the serial, not the device id its pages link to)."""
    row = await _visible_alert(conn, p, alert_id)
    await _record_alert_read(conn, p, "alert", str(alert_id), [row])
    return JSONResponse(jsonable_encoder(alert_view(p, row)))


async def _visible_alert(conn: Conn, p: PageUser, alert_id: int) -> dict[str, Any]:
    rows = await page_queries.list_alerts(conn, p, state=None, alert_id=alert_id)
    if not rows:
        raise NotFound(f"alert {alert_id} not found")
    return rows[0]


async def _record_alert_read(
    conn: Conn, p: PageUser, object_type: str, object_id: str | None, rows: list[dict[str, Any]]
) -> None:
    # Alerts carry clinical values for those who see owners' data; a vendor's are technical only.
    if sees_owner_data(p):
        await access.record(conn, audit.READ, object_type, object_id, owner_ids=audit.owners_of(rows))


def _local(url: str) -> str:
    # Back to the page the form was on, but only ever a page of ours.
    parts = urlsplit(url)
    return (
        (parts.path + (f"?{parts.query}" if parts.query else "")) if parts.path.startswith("/") else "/alerts"
    )
