"""Web pages and forms between owner and provider: the owner's page, messages, appointments.

The rules (who may write, which status may follow which) live in `dashboards.contact`, shared with
the API; these routes turn forms into its calls and its refusals into a message on the page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from dashboards import contact, web_queries
from dashboards.errors import ApiError
from dashboards.models import AppointmentCreate, AppointmentUpdate, MessageCreate
from dashboards.queries import PageRequest, list_devices, visible_device
from dashboards.web import (
    RECENT,
    Conn,
    CsrfField,
    PageUser,
    appointment_view,
    back_to,
    check_csrf,
    device_view,
    render,
    user_context,
)

router = APIRouter(include_in_schema=False)
OWNER_DEVICES = PageRequest(limit=50)
Action = Literal["confirm", "propose", "decline", "accept", "cancel"]
_STATUS_OF: dict[Action, Literal["confirmed", "proposed", "declined", "cancelled"]] = {
    "confirm": "confirmed",
    "propose": "proposed",
    "decline": "declined",
    "accept": "confirmed",
    "cancel": "cancelled",
}


def parse_slot(text: str) -> datetime:
    """A `datetime-local` form value, taken as UTC (the form says so); 422-style ApiError otherwise."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ApiError(422, "Please give a date and time.") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" if err["loc"] else str(err["msg"])


@router.get("/my", response_class=HTMLResponse)
async def owner_page(
    *, request: Request, conn: Conn, p: PageUser, notice: str = "", error: str = ""
) -> Response:
    """The owner's devices, their provider's messages and their appointment requests."""
    if p.role != "owner":
        return RedirectResponse("/fleet", status_code=303)
    rows = await list_devices(conn, p, OWNER_DEVICES)
    counts = await web_queries.open_alert_counts(conn, p)
    messages, appointments = [], []
    for row in rows:
        messages += await contact.list_messages(conn, p, row, RECENT)
        appointments += [appointment_view(a) for a in await contact.list_appointments(conn, p, row, RECENT)]
    messages.sort(key=lambda m: m["created_at"], reverse=True)
    appointments.sort(key=lambda a: a["appointment_id"], reverse=True)
    provider = await web_queries.owner_provider_name(conn, p)
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


@router.post("/my/appointments")
async def owner_request_appointment(
    *,
    request: Request,
    conn: Conn,
    p: PageUser,
    csrf_token: CsrfField,
    device_id: Annotated[str, Form(max_length=64)] = "",
    slot: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """The owner asks for an appointment about one of their devices."""
    check_csrf(request, csrf_token)
    try:
        device = await visible_device(conn, p, device_id)
        body = AppointmentCreate(requested_for=parse_slot(slot), reason=reason.strip())
        await contact.request_appointment(conn, p, device, body)
    except ApiError as exc:
        return back_to("/my", error=str(exc.detail))
    except ValidationError as exc:
        return back_to("/my", error=_first_error(exc))
    return back_to("/my", "Your request was sent to your provider.")


@router.post("/my/appointments/{device_id}/{appointment_id}")
async def owner_answer(
    *,
    request: Request,
    conn: Conn,
    p: PageUser,
    device_id: str,
    appointment_id: int,
    csrf_token: CsrfField,
    action: Annotated[Action, Form()],
) -> Response:
    """The owner accepts a proposed time or cancels."""
    check_csrf(request, csrf_token)
    return await _update(
        conn, p, device_id=device_id, appointment_id=appointment_id, action=action, slot=None, path="/my"
    )


@router.post("/devices/{device_id}/messages")
async def provider_message(
    *,
    request: Request,
    conn: Conn,
    p: PageUser,
    device_id: str,
    csrf_token: CsrfField,
    body: Annotated[str, Form(max_length=5000)] = "",
) -> Response:
    """The provider writes to the device's owner."""
    check_csrf(request, csrf_token)
    path = f"/devices/{device_id}"
    try:
        device = await visible_device(conn, p, device_id)
        await contact.send_message(conn, p, device, MessageCreate(body=body.strip()))
    except ApiError as exc:
        return back_to(path, error=str(exc.detail))
    except ValidationError:
        return back_to(path, error="Please write a message first.")
    return back_to(path, "Message sent to the owner.")


@router.post("/devices/{device_id}/appointments/{appointment_id}")
async def provider_answer(
    *,
    request: Request,
    conn: Conn,
    p: PageUser,
    device_id: str,
    appointment_id: int,
    csrf_token: CsrfField,
    action: Annotated[Action, Form()],
    slot: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """The provider confirms, declines or proposes another time."""
    check_csrf(request, csrf_token)
    path = f"/devices/{device_id}"
    return await _update(
        conn, p, device_id=device_id, appointment_id=appointment_id, action=action, slot=slot, path=path
    )


async def _update(
    conn: Conn,
    p: PageUser,
    *,
    device_id: str,
    appointment_id: int,
    action: Action,
    slot: str | None,
    path: str,
) -> Response:
    try:
        device = await visible_device(conn, p, device_id)
        proposed = parse_slot(slot) if action == "propose" and slot is not None else None
        body = AppointmentUpdate(status=_STATUS_OF[action], proposed_for=proposed)
        row = await contact.update_appointment(conn, p, device, appointment_id, body)
    except ApiError as exc:
        return back_to(path, error=str(exc.detail))
    except ValidationError as exc:
        return back_to(path, error=_first_error(exc))
    return back_to(path, f"Appointment {row['status']}.")
