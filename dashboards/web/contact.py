"""Forms between owner and provider: messages and appointments, from the owner's page and the device page.

The rules (who may write, which status may follow which) live in `dashboards.contact`, shared with
the API; these routes turn forms into its calls and its refusals into a message on the page.
A slot comes from a `datetime-local` field: with JavaScript, app.js sends it as an instant in
the viewer's time zone; without, the form says UTC and the value is taken as UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from dashboards import contact
from dashboards.models import AppointmentCreate, AppointmentUpdate, MessageCreate
from dashboards.queries import visible_device
from dashboards.web.session import Conn, CsrfField, PageUser, back_to, check_csrf
from pulsewire.errors import Conflict, Forbidden, InvalidInput, NotFound

# What a form's refusal can be: said on the page it came from, not as an error page.
REFUSALS = (Conflict, Forbidden, InvalidInput, NotFound)

router = APIRouter(include_in_schema=False)
Action = Literal["confirm", "propose", "decline", "accept", "cancel"]
_STATUS_OF: dict[Action, Literal["confirmed", "proposed", "declined", "cancelled"]] = {
    "confirm": "confirmed",
    "propose": "proposed",
    "decline": "declined",
    "accept": "confirmed",
    "cancel": "cancelled",
}


def parse_slot(text: str) -> datetime:
    """A form's slot: an ISO instant (app.js sends the viewer's local time so), or a `datetime-local`
    value without a zone, taken as UTC as the form says; InvalidInput otherwise."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidInput("Please give a date and time.", field="slot") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" if err["loc"] else str(err["msg"])


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
    except REFUSALS as exc:
        return back_to("/my", error=str(exc))
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
    except REFUSALS as exc:
        return back_to(path, error=str(exc))
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
    except REFUSALS as exc:
        return back_to(path, error=str(exc))
    except ValidationError as exc:
        return back_to(path, error=_first_error(exc))
    return back_to(path, f"Appointment {row['status']}.")
