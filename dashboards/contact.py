"""Two-way contact about a device: provider → owner messages, owner appointment requests.

Callers pass a device already checked by `queries.visible_device`; vendors never reach owner
contact (`Forbidden`), owners see only what concerns them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from dashboards.models import AppointmentCreate, AppointmentUpdate, MessageCreate
from dashboards.queries import PageRequest, audit, require_role
from dashboards.types import AConn, Principal, Row
from pulsewire.errors import Conflict, Forbidden, InvalidInput, NotFound

STAFF = ("admin", "provider_staff")
_MESSAGE_COLUMNS = """m.message_id, m.device_id, m.owner_id, m.sender_id, u.display_name AS sender_name,
    m.subject, m.body, m.created_at"""
_APPOINTMENT_COLUMNS = """appointment_id, device_id, owner_id, requested_for, reason, status,
    proposed_for, note, created_at, updated_at"""
# status -> statuses it may move to, per side
_STAFF_MOVES = {
    "requested": {"confirmed", "proposed", "declined"},
    "proposed": {"confirmed", "proposed", "declined"},
    "confirmed": {"proposed", "declined"},
}
_OWNER_MOVES = {
    "requested": {"cancelled"},
    "proposed": {"confirmed", "cancelled"},
    "confirmed": {"cancelled"},
}


def _owner_filter(p: Principal) -> int | None:
    return p.owner_id if p.role == "owner" else None


async def send_message(conn: AConn, p: Principal, device: Row, body: MessageCreate) -> Row:
    """A message from the provider to the device's owner."""
    require_role(p, STAFF, "message owners")
    if device["owner_id"] is None:
        raise InvalidInput("this device has no owner to message", code="no_owner")
    cur = await conn.execute(
        """INSERT INTO messages (device_id, owner_id, sender_id, subject, body)
           VALUES (%s, %s, %s, %s, %s) RETURNING message_id""",
        (device["device_id"], device["owner_id"], p.user_id, body.subject, body.body),
    )
    row = await cur.fetchone()
    assert row is not None
    await audit(
        conn, p, "message.send", "device", device["device_id"], details={"message_id": row["message_id"]}
    )
    return (await list_messages(conn, p, device, PageRequest(1, 0), message_id=row["message_id"]))[0]


async def list_messages(
    conn: AConn, p: Principal, device: Row, page: PageRequest, *, message_id: int | None = None
) -> list[Row]:
    """Messages about the device: all for staff, their own for the owner, none for vendors (Forbidden)."""
    require_role(p, (*STAFF, "owner"), "read owner messages")
    cur = await conn.execute(
        f"""SELECT {_MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.user_id = m.sender_id
            WHERE m.device_id = %(device)s AND (%(owner)s::bigint IS NULL OR m.owner_id = %(owner)s)
              AND (%(id)s::bigint IS NULL OR m.message_id = %(id)s)
            ORDER BY m.message_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "device": device["device_id"],
            "owner": _owner_filter(p),
            "id": message_id,
            "limit": page.limit,
            "offset": page.offset,
        },
    )
    return await cur.fetchall()


async def request_appointment(conn: AConn, p: Principal, device: Row, body: AppointmentCreate) -> Row:
    """An owner asks their provider for an appointment about their device."""
    require_role(p, ("owner",), "request appointments")
    if body.requested_for <= datetime.now(UTC):
        raise InvalidInput("requested_for must be in the future", field="requested_for", code="invalid_time")
    cur = await conn.execute(
        f"""INSERT INTO appointments (device_id, owner_id, requested_by, requested_for, reason)
            VALUES (%s, %s, %s, %s, %s) RETURNING {_APPOINTMENT_COLUMNS}""",
        (device["device_id"], p.owner_id, p.user_id, body.requested_for, body.reason),
    )
    row = await cur.fetchone()
    assert row is not None
    await audit(conn, p, "appointment.request", "appointment", str(row["appointment_id"]))
    return row


async def list_appointments(conn: AConn, p: Principal, device: Row, page: PageRequest) -> list[Row]:
    """Appointments about the device: all for staff, their own for the owner, none for vendors (Forbidden)."""
    require_role(p, (*STAFF, "owner"), "see appointments")
    cur = await conn.execute(
        f"""SELECT {_APPOINTMENT_COLUMNS} FROM appointments
            WHERE device_id = %(device)s AND (%(owner)s::bigint IS NULL OR owner_id = %(owner)s)
            ORDER BY appointment_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
        {
            "device": device["device_id"],
            "owner": _owner_filter(p),
            "limit": page.limit,
            "offset": page.offset,
        },
    )
    return await cur.fetchall()


async def update_appointment(
    conn: AConn, p: Principal, device: Row, appointment_id: int, body: AppointmentUpdate
) -> Row:
    """Staff confirm, decline or propose another time; the owner accepts a proposal or cancels."""
    require_role(p, (*STAFF, "owner"), "change appointments")
    current = await _appointment(conn, p, device, appointment_id)
    moves = _OWNER_MOVES if p.role == "owner" else _STAFF_MOVES
    allowed_any = set().union(*moves.values())
    if body.status not in allowed_any:
        raise Forbidden(f"a {p.role} may not set an appointment to {body.status}")
    if body.status not in moves.get(current["status"], set()):
        raise Conflict(f"cannot go from {current['status']} to {body.status}", code="invalid_transition")
    if body.status == "proposed" and body.proposed_for is None:
        raise InvalidInput(
            "proposing another time needs proposed_for", field="proposed_for", code="missing_time"
        )
    proposed = body.proposed_for if body.status == "proposed" else current["proposed_for"]
    cur = await conn.execute(
        f"""UPDATE appointments SET status = %s, proposed_for = %s, note = %s, updated_by = %s,
                updated_at = now() WHERE appointment_id = %s RETURNING {_APPOINTMENT_COLUMNS}""",
        (body.status, proposed, body.note or current["note"], p.user_id, appointment_id),
    )
    row = await cur.fetchone()
    assert row is not None
    await audit(conn, p, f"appointment.{body.status}", "appointment", str(appointment_id))
    return row


async def _appointment(conn: AConn, p: Principal, device: Row, appointment_id: int) -> Row:
    cur = await conn.execute(
        f"""SELECT {_APPOINTMENT_COLUMNS} FROM appointments WHERE appointment_id = %(id)s
              AND device_id = %(device)s AND (%(owner)s::bigint IS NULL OR owner_id = %(owner)s)""",
        {"id": appointment_id, "device": device["device_id"], "owner": _owner_filter(p)},
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"appointment {appointment_id} not found")
    return row
