"""Exports: a device as FHIR R4 or COVESA VSS, and an owner's download of everything held about them.

Each export first finds the device through `visible_device` (another tenant's is a 404), picks the
audience from the caller's role (a vendor gets the technical subset) and records an `export` or
`download` entry in the access audit. Windows are checked like the readings API's: within
retention, at most a day ahead, default the last 24 h.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from dashboards import access
from dashboards.api import API_PREFIX
from dashboards.deps import Conn, CurrentPrincipal
from dashboards.queries import ReadingsQuery, visible_device
from dashboards.types import AConn, Principal, Row
from pulsewire import audit
from pulsewire.errors import Forbidden
from pulsewire.interop import records
from pulsewire.interop.records import Audience, DeviceRecords, Window, instant
from pulsewire.settings import Settings

router = APIRouter(prefix=API_PREFIX, tags=["export"])
FHIR_JSON = "application/fhir+json"
# The owner's download defaults to a month: a year of a car's readings is not one response.
RECORDS_DEFAULT = timedelta(days=30)
_FAULT_EVENTS = ("dtc_set", "dtc_cleared", "mil_on", "mil_off")


def audience_of(p: Principal) -> Audience:
    """What a caller's role may take away: vendors the technical subset, owners their own device."""
    return {"vendor_staff": Audience.VENDOR, "owner": Audience.OWNER}.get(p.role, Audience.PROVIDER)


def checked_window(
    settings: Settings, start: datetime | None, end: datetime | None, default: timedelta
) -> Window:
    """The window asked for, defaulted and checked like the readings API's (422 naming the field)."""
    end = _utc(end) or datetime.now(UTC)
    start = _utc(start) or end - default
    ReadingsQuery("", [], start, end, None, "avg").check(
        now=datetime.now(UTC), retention=timedelta(days=settings.retention_days)
    )
    return Window(start, end)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


async def _load(
    request: Request,
    conn: AConn,
    p: Principal,
    device_id: str,
    *,
    asked: tuple[datetime | None, datetime | None],
    what: str,
) -> DeviceRecords:
    start, end = asked
    device = await visible_device(conn, p, device_id)
    window = checked_window(request.app.state.settings, start, end, timedelta(hours=24))
    loaded = await records.load(conn, device_id, window, audience_of(p))
    owners = (int(device["owner_id"]),) if device["owner_id"] is not None else ()
    detail = {"start": instant(window.start), "end": instant(window.end), "audience": audience_of(p).value}
    await access.record(conn, audit.EXPORT, what, device_id, owner_ids=owners, detail=detail)
    return loaded


@router.get(
    "/devices/{device_id}/fhir", response_class=Response, responses={200: {"content": {FHIR_JSON: {}}}}
)
async def get_fhir(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    device_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
    bundle: Literal["collection", "transaction"] = "collection",
) -> Response:
    """The device's records in [start, end) as a FHIR R4 Bundle (default: the last 24 h)."""
    from pulsewire.interop.fhir import export_bundle  # fhir.resources is heavy: load it on first use

    loaded = await _load(request, conn, principal, device_id, asked=(start, end), what="fhir")
    body = export_bundle(loaded, transaction=bundle == "transaction").model_dump_json(exclude_none=True)
    return Response(body, media_type=FHIR_JSON)


@router.get("/devices/{device_id}/vss")
async def get_vss(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    device_id: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, Any]:
    """A vehicle's trouble codes, lamp and latest signals in [start, end) in COVESA VSS terms."""
    from pulsewire.interop.vss import export_vss

    loaded = await _load(request, conn, principal, device_id, asked=(start, end), what="vss")
    return await export_vss(conn, loaded)


@router.get("/me/records", response_class=Response)
async def get_my_records(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv")] = "json",
    start: datetime | None = None,
    end: datetime | None = None,
) -> Response:
    """Everything held about the calling owner and their devices (default: the last 30 days)."""
    if principal.role != "owner" or principal.owner_id is None:
        raise Forbidden("only an owner downloads their own records")
    window = checked_window(request.app.state.settings, start, end, RECORDS_DEFAULT)
    data = await owner_records(conn, principal.owner_id, window)
    await access.record(
        conn, audit.DOWNLOAD, "records", str(principal.owner_id), owner_ids=(principal.owner_id,),
        detail={"format": format, "start": instant(window.start), "end": instant(window.end)},
    )  # fmt: skip
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    if format == "csv":
        headers = {"Content-Disposition": f'attachment; filename="pulsewire-records-{stamp}.csv"'}
        return Response(records_csv(data), media_type="text/csv; charset=utf-8", headers=headers)
    headers = {"Content-Disposition": f'attachment; filename="pulsewire-records-{stamp}.json"'}
    return Response(json.dumps(data, indent=2), media_type="application/json", headers=headers)


async def owner_records(conn: AConn, owner_id: int, window: Window) -> dict[str, Any]:
    """The owner, and per device its readings, events, alerts, messages, appointments (and for a car
    its fault and repair history), as plain JSON values."""
    cur = await conn.execute(
        "SELECT owner_id, full_name, birth_date, email, phone, address FROM owners WHERE owner_id = %s",
        (owner_id,),
    )
    owner = await cur.fetchone() or {}
    cur = await conn.execute(
        "SELECT device_id FROM devices WHERE owner_id = %s ORDER BY device_id", (owner_id,)
    )
    devices = []
    for row in await cur.fetchall():
        loaded = await records.load(conn, row["device_id"], window, Audience.OWNER)
        devices.append(await _device_records(conn, owner_id, loaded))
    plain: dict[str, Any] = _plain(
        {"owner": owner, "start": window.start, "end": window.end, "devices": devices}
    )
    return plain


async def _device_records(conn: AConn, owner_id: int, loaded: DeviceRecords) -> dict[str, Any]:
    device_id = loaded.device["device_id"]
    d = loaded.device
    entry: dict[str, Any] = {
        "device": {k: d[k] for k in ("device_id", "kind", "model", "serial", "firmware", "last_seen_at")}
        | {"manufacturer": d["vendor_name"], "provider": d["provider_name"]},
        "readings": loaded.readings,
        "events": loaded.events,
        "alerts": loaded.alerts,
        "messages": await _rows(
            conn,
            """SELECT m.created_at, u.display_name AS sender, m.subject, m.body, m.read_at FROM messages m
               LEFT JOIN users u ON u.user_id = m.sender_id
               WHERE m.owner_id = %s AND m.device_id = %s ORDER BY m.created_at""",
            (owner_id, device_id),
        ),
        "appointments": await _rows(
            conn,
            """SELECT created_at, requested_for, proposed_for, status, reason, note FROM appointments
               WHERE owner_id = %s AND device_id = %s ORDER BY created_at""",
            (owner_id, device_id),
        ),
    }
    if loaded.kind == "vehicle":
        entry["fault_history"] = [e for e in loaded.events if e["type"] in _FAULT_EVENTS]
        entry["repairs"] = await _rows(
            conn,
            """SELECT created_at, name, status, detail, result, finished_at FROM commands
               WHERE device_id = %s AND name = 'clear_dtc' ORDER BY created_at""",
            (device_id,),
        )
    return entry


async def _rows(conn: AConn, sql: str, params: tuple[Any, ...]) -> list[Row]:
    cur = await conn.execute(sql, params)
    return await cur.fetchall()


def _plain(value: Any) -> Any:
    """Dates as ISO text, everything else as JSON has it."""
    return json.loads(
        json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
    )


_CSV_SECTIONS = ("readings", "events", "alerts", "messages", "appointments", "repairs")


def records_csv(data: dict[str, Any]) -> str:
    """One CSV of the download: a row per record, `section` and `device_id` first, the rest as JSON."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "device_id", "time", "name", "value", "detail"])
    owner = data["owner"]
    writer.writerow(["owner", "", "", owner.get("full_name", ""), "", json.dumps(owner)])
    for device in data["devices"]:
        device_id = device["device"]["device_id"]
        writer.writerow(
            ["device", device_id, "", device["device"]["model"], "", json.dumps(device["device"])]
        )
        for section in _CSV_SECTIONS:
            for row in device.get(section, []):
                writer.writerow([section, device_id, *_csv_fields(section, row)])
    return out.getvalue()


def _csv_fields(section: str, row: dict[str, Any]) -> list[str]:
    if section == "readings":
        return [row["ts"], row["metric"], str(row["value"]), ""]
    if section == "events":
        return [row["ts"], row["type"], "", json.dumps(row["data"])]
    if section == "alerts":
        return [row["started_at"], row["rule_name"], row["severity"], json.dumps(row)]
    time = row.get("created_at", "")
    name = row.get("subject") or row.get("status") or row.get("name") or ""
    return [time, str(name), "", json.dumps(row)]
