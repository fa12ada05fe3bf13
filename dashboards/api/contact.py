"""Two-way contact: provider → owner messages and owner appointment requests, per device."""

from __future__ import annotations

from fastapi import APIRouter, status

from dashboards import contact
from dashboards.api import API_PREFIX
from dashboards.api.common import BigId, page_of
from dashboards.deps import Conn, CurrentPrincipal, Paging
from dashboards.models import (
    AppointmentCreate,
    AppointmentPublic,
    AppointmentUpdate,
    MessageCreate,
    MessagePublic,
    Page,
)
from dashboards.queries import visible_device

router = APIRouter(prefix=API_PREFIX, tags=["contact"])


@router.post("/devices/{device_id}/messages", status_code=status.HTTP_201_CREATED)
async def send_message(
    *, principal: CurrentPrincipal, conn: Conn, device_id: str, body: MessageCreate
) -> MessagePublic:
    """Provider staff write to the device's owner."""
    device = await visible_device(conn, principal, device_id)
    return MessagePublic.model_validate(await contact.send_message(conn, principal, device, body))


@router.get("/devices/{device_id}/messages")
async def list_messages(
    *, principal: CurrentPrincipal, conn: Conn, page: Paging, device_id: str
) -> Page[MessagePublic]:
    """Messages about the device, newest first (the owner sees theirs)."""
    device = await visible_device(conn, principal, device_id)
    rows = await contact.list_messages(conn, principal, device, page)
    return page_of(rows, page, MessagePublic.model_validate)


@router.post("/devices/{device_id}/appointments", status_code=status.HTTP_201_CREATED)
async def request_appointment(
    *, principal: CurrentPrincipal, conn: Conn, device_id: str, body: AppointmentCreate
) -> AppointmentPublic:
    """The owner asks for an appointment."""
    device = await visible_device(conn, principal, device_id)
    return AppointmentPublic.model_validate(await contact.request_appointment(conn, principal, device, body))


@router.get("/devices/{device_id}/appointments")
async def list_appointments(
    *, principal: CurrentPrincipal, conn: Conn, page: Paging, device_id: str
) -> Page[AppointmentPublic]:
    """Appointments about the device, newest first."""
    device = await visible_device(conn, principal, device_id)
    rows = await contact.list_appointments(conn, principal, device, page)
    return page_of(rows, page, AppointmentPublic.model_validate)


@router.patch(
    "/devices/{device_id}/appointments/{appointment_id}",
    responses={409: {"description": "not a valid change from the current status"}},
)
async def update_appointment(
    *,
    principal: CurrentPrincipal,
    conn: Conn,
    device_id: str,
    appointment_id: BigId,
    body: AppointmentUpdate,
) -> AppointmentPublic:
    """Staff confirm, decline or propose another time; the owner accepts a proposal or cancels."""
    device = await visible_device(conn, principal, device_id)
    row = await contact.update_appointment(conn, principal, device, appointment_id, body)
    return AppointmentPublic.model_validate(row)
