"""What an export reads: one device's rows in a time window, already cut to one audience.

The audience decides what leaves: a provider (and an admin) gets everything, the owner their own
device, a vendor the technical subset only (no owner, no clinical metric or event, technical alerts
only, event data through `schemas.catalogue.vendor_event_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pulsewire.errors import DatabaseError, InvalidInput, NotFound
from schemas.catalogue import CLINICAL_EVENTS, DeviceKind, metric_for, vendor_event_data

AConn = psycopg.AsyncConnection[dict[str, Any]]
Row = dict[str, Any]

# One export is one document in memory: past this many readings, narrow the window.
MAX_EXPORT_READINGS = 20_000


def instant(ts: datetime) -> str:
    """A timestamp as exports write it, always in UTC, so the same instant always reads the same."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Audience(StrEnum):
    """Who an export is for."""

    PROVIDER = "provider"
    VENDOR = "vendor"
    OWNER = "owner"


@dataclass(frozen=True)
class Window:
    """A half-open event-time range [start, end)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise InvalidInput("end must be after start", field="end", code="invalid_range")


@dataclass(frozen=True)
class DeviceRecords:
    """One device's rows in a window, for one audience, and the moment they were read."""

    audience: Audience
    window: Window
    read_at: datetime
    device: Row
    owner: Row | None
    readings: list[Row]
    events: list[Row]
    alerts: list[Row]

    @property
    def kind(self) -> DeviceKind:
        return DeviceKind(self.device["kind"])

    def silent_since(self) -> datetime | None:
        """When the device fell silent (last contact + its heartbeat), if it is silent at the window's end."""
        judged_at = min(self.window.end, self.read_at)
        last = self.device["last_seen_at"] or self.device["created_at"]
        due = last + timedelta(seconds=int(self.device["heartbeat_s"]))
        return due if due < judged_at else None


async def connect(url: str) -> AConn:
    """A new async connection with dict rows (for the CLI; the dashboard uses its pool), or DatabaseError."""
    try:
        return await psycopg.AsyncConnection.connect(url, row_factory=dict_row, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc


async def load(conn: AConn, device_id: str, window: Window, audience: Audience) -> DeviceRecords:
    """The device's rows in `window` as `audience` may see them; NotFound for an unknown device."""
    device = await _device(conn, device_id)
    owner = None
    if audience is not Audience.VENDOR and device["owner_id"] is not None:
        owner = await _owner(conn, int(device["owner_id"]))
    kind = DeviceKind(device["kind"])
    readings = await _readings(conn, device_id, window)
    events = await _events(conn, device_id, window)
    alerts = await _alerts(conn, device_id, window)
    if audience is Audience.VENDOR:
        readings = [r for r in readings if not _clinical(kind, r["metric"])]
        events = [
            e | {"data": vendor_event_data(e["type"], dict(e["data"]))}
            for e in events
            if e["type"] not in CLINICAL_EVENTS
        ]
        alerts = [a | {"values": {}} for a in alerts if a["class"] == "technical"]
    cur = await conn.execute("SELECT now() AS now")
    now = (await cur.fetchone() or {})["now"]
    return DeviceRecords(audience, window, now, device, owner, readings, events, alerts)


def _clinical(kind: DeviceKind, metric: str) -> bool:
    # A metric no longer in the catalogue is kept from vendors too: unknown is not technical.
    entry = metric_for(kind, metric)
    return entry is None or entry.clinical


async def _device(conn: AConn, device_id: str) -> Row:
    cur = await conn.execute(
        """SELECT d.device_id, d.kind, d.model, d.serial, d.firmware, d.owner_id, d.heartbeat_s,
                  d.last_seen_at, d.created_at, d.decommissioned_at,
                  v.name AS vendor_name, p.name AS provider_name, d.provider_org_id, d.vendor_org_id
           FROM devices d JOIN orgs v ON v.org_id = d.vendor_org_id
           JOIN orgs p ON p.org_id = d.provider_org_id WHERE d.device_id = %s""",
        (device_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"device {device_id!r}")
    return row


async def _owner(conn: AConn, owner_id: int) -> Row | None:
    cur = await conn.execute(
        "SELECT owner_id, full_name, birth_date, email, phone, address FROM owners WHERE owner_id = %s",
        (owner_id,),
    )
    return await cur.fetchone()


async def _readings(conn: AConn, device_id: str, window: Window) -> list[Row]:
    cur = await conn.execute(
        """SELECT ts, metric, value FROM readings
           WHERE device_id = %s AND ts >= %s AND ts < %s ORDER BY ts, metric LIMIT %s""",
        (device_id, window.start, window.end, MAX_EXPORT_READINGS + 1),
    )
    rows = await cur.fetchall()
    if len(rows) > MAX_EXPORT_READINGS:
        raise InvalidInput(
            f"more than {MAX_EXPORT_READINGS} readings in this window: narrow it",
            field="end",
            code="export_too_large",
        )
    return rows


async def _events(conn: AConn, device_id: str, window: Window) -> list[Row]:
    cur = await conn.execute(
        """SELECT ts, type, data, boot_id, seq FROM events
           WHERE device_id = %s AND ts >= %s AND ts < %s ORDER BY ts, seq LIMIT %s""",
        (device_id, window.start, window.end, MAX_EXPORT_READINGS),
    )
    return await cur.fetchall()


async def _alerts(conn: AConn, device_id: str, window: Window) -> list[Row]:
    # Alerts whose condition overlaps the window, still open ones included.
    cur = await conn.execute(
        """SELECT alert_id, rule_key, rule_name, severity, class, state, started_at, last_seen_at,
                  ended_at, "values", acknowledged_at, resolved_at
           FROM alerts WHERE device_id = %s AND started_at < %s
             AND coalesce(ended_at, 'infinity') >= %s
           ORDER BY started_at, alert_id""",
        (device_id, window.end, window.start),
    )
    return await cur.fetchall()


async def events_before(conn: AConn, device_id: str, before: datetime, types: list[str]) -> list[Row]:
    """Events of these types before `before`, oldest first: the state a window starts from."""
    cur = await conn.execute(
        """SELECT ts, type, data FROM events
           WHERE device_id = %s AND ts < %s AND type = ANY(%s) ORDER BY ts, seq""",
        (device_id, before, types),
    )
    return await cur.fetchall()
