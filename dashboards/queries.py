"""Tenant-scoped data access for the API routes and the web pages alike.

Scoping happens here and nowhere else: every device-bound query starts from `visible_device`
or `_DEVICE_SCOPE`, so a route cannot forget it (which alerts a caller sees is `relay.visibility`).
Another tenant's object is `NotFound`; an object the caller sees but may not act on is `Forbidden`
(raised by `require_*`). Errors are `pulsewire.errors`; the dashboard maps them to statuses.

Who sees which device::

    admin           every device
    provider_staff  devices with provider_org_id = their org (owner details included)
    vendor_staff    devices with vendor_org_id = their org (technical data only, no owner)
    owner           devices with owner_id = theirs
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dashboards import access
from dashboards.types import AConn, Principal, Row
from pulsewire import audit as access_audit
from pulsewire import rollups
from pulsewire.errors import Forbidden, InvalidInput, NotFound, QueryTimeout
from relay.visibility import Viewer
from schemas.catalogue import CATALOGUE, CLINICAL_EVENTS, DeviceKind, Metric, vendor_event_data

MAX_BUCKETS = 1_000
MAX_RAW_POINTS = 10_000
# How far past now a readings range may end (clocks drift; charts round up to the hour).
READINGS_AHEAD = timedelta(days=1)
AGGREGATES = {
    "avg": "avg(value)",
    "min": "min(value)",
    "max": "max(value)",
    "last": "(array_agg(value ORDER BY ts DESC))[1]",
}
_BUCKET = re.compile(r"^(\d{1,6})(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# The one WHERE clause that decides which devices a caller sees (alias `d` = devices).
_DEVICE_SCOPE = {
    "admin": "TRUE",
    "provider_staff": "d.provider_org_id = %(scope_org)s",
    "vendor_staff": "d.vendor_org_id = %(scope_org)s",
    "owner": "d.owner_id = %(scope_owner)s",
}
_DEVICE_COLUMNS = """d.device_id, d.kind, d.model, d.serial, d.firmware, d.provider_org_id,
    d.vendor_org_id, d.owner_id, d.online, d.status_at, d.last_seen_at, d.created_at, d.decommissioned_at"""
_OWNER_COLUMNS = """o.full_name AS owner_full_name, o.email AS owner_email, o.phone AS owner_phone,
    o.birth_date AS owner_birth_date, o.address AS owner_address"""


def scope_sql(p: Principal) -> tuple[str, dict[str, Any]]:
    """The device filter for this caller, with its parameters."""
    clause = _DEVICE_SCOPE.get(p.role, "FALSE")
    return clause, {"scope_org": p.org_id, "scope_owner": p.owner_id}


def sees_owner_data(p: Principal) -> bool:
    """Vendors never see owners (minimum necessary disclosure)."""
    return p.role != "vendor_staff"


def sees_clinical_data(p: Principal) -> bool:
    """Clinical metrics and events are for the provider, the owner and admins."""
    return p.role != "vendor_staff"


def require_role(p: Principal, roles: tuple[str, ...], action: str) -> None:
    """Forbidden unless the caller's role may perform `action`."""
    if p.role not in roles:
        raise Forbidden(f"a {p.role} may not {action}")


_AUDIENCE_OF_ROLE = {
    "provider_staff": "provider",
    "vendor_staff": "vendor",
    "owner": "owner",
    "admin": "admin",
}


def viewer_of(p: Principal) -> Viewer:
    """The caller as `relay.visibility` scopes alerts: its audience and its org or owner."""
    audience = _AUDIENCE_OF_ROLE.get(p.role)
    if audience is None:
        raise Forbidden(f"a {p.role} sees no alerts")
    return Viewer(audience, p.org_id, p.owner_id)


@dataclass(frozen=True)
class PageRequest:
    """Capped offset pagination."""

    limit: int = 100
    offset: int = 0


async def list_devices(conn: AConn, p: Principal, page: PageRequest, *, kind: str | None = None) -> list[Row]:
    """Devices the caller sees, ordered by id."""
    clause, params = scope_sql(p)
    params |= {"kind": kind, "limit": page.limit, "offset": page.offset}
    cur = await conn.execute(
        f"""SELECT {_DEVICE_COLUMNS}, {_OWNER_COLUMNS} FROM devices d
            LEFT JOIN owners o ON o.owner_id = d.owner_id
            WHERE {clause} AND (%(kind)s::text IS NULL OR d.kind = %(kind)s)
            ORDER BY d.device_id LIMIT %(limit)s OFFSET %(offset)s""",
        params,
    )
    rows = await cur.fetchall()
    if sees_owner_data(p):  # the list shows each device's owner: one entry per owner listed
        await access.record(conn, access_audit.READ, "device_list", owner_ids=access_audit.owners_of(rows))
    return rows


async def visible_device(conn: AConn, p: Principal, device_id: str) -> Row:
    """The device if the caller sees it; 404 otherwise (also for another tenant's)."""
    clause, params = scope_sql(p)
    # Every device-bound read starts here: the one place that records who read which owner's device,
    # in this same statement (a found device only).
    audit_sql, audit_params = access.read_of_rows("visible", "device", device_id)
    cur = await conn.execute(
        f"""WITH visible AS (
                SELECT {_DEVICE_COLUMNS}, {_OWNER_COLUMNS} FROM devices d
                LEFT JOIN owners o ON o.owner_id = d.owner_id
                WHERE d.device_id = %(device_id)s AND {clause}){", " + audit_sql if audit_sql else ""}
            SELECT * FROM visible""",
        params | {"device_id": device_id} | audit_params,
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"device {device_id!r} not found")
    return row


def parse_bucket(text: str) -> timedelta:
    """`30s`, `5m`, `1h`, `1d` as a timedelta; InvalidInput otherwise."""
    match = _BUCKET.match(text.strip())
    if not match or int(match[1]) == 0:
        raise InvalidInput(
            f"bucket must look like 30s, 5m, 1h or 1d, got {text!r}", field="bucket", code="invalid_bucket"
        )
    return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])


def readable_metrics(p: Principal, kind: str, requested: list[str]) -> list[Metric]:
    """The catalogue entries the caller asked for (all it may see when none).

    InvalidInput for an unknown metric, Forbidden for a clinical one asked by a vendor.
    """
    catalogue = CATALOGUE[DeviceKind(kind)]
    if not requested:
        return [m for m in catalogue.values() if sees_clinical_data(p) or not m.clinical]
    unknown = [name for name in requested if name not in catalogue]
    if unknown:
        raise InvalidInput(
            f"unknown metric(s) for {kind} devices: {', '.join(unknown)}",
            field="metric",
            code="unknown_metric",
        )
    chosen = [catalogue[name] for name in dict.fromkeys(requested)]
    hidden = [m.name for m in chosen if m.clinical and not sees_clinical_data(p)]
    if hidden:
        raise Forbidden(f"clinical metric(s) are not shown to a vendor: {', '.join(hidden)}")
    return chosen


@dataclass(frozen=True)
class ReadingsQuery:
    """A validated request for a device's readings."""

    device_id: str
    metrics: list[str]
    start: datetime
    end: datetime
    bucket: timedelta | None
    agg: str

    def check(self, *, now: datetime, retention: timedelta, max_buckets: int = MAX_BUCKETS) -> None:
        """InvalidInput, naming the field, on a reversed range, one beyond retention or too many buckets."""
        if self.end <= self.start:
            raise InvalidInput("end must be after start", field="end", code="invalid_range")
        # Nothing older than retention is kept, so a longer range only costs work (or partitions).
        earliest, latest = now - retention, now + READINGS_AHEAD
        if self.start < earliest:
            raise InvalidInput(
                f"start: readings are kept {retention.days} days, so start must be at or after "
                f"{earliest.isoformat(timespec='seconds')}",
                code="invalid_range",
                details={"field": "start", "earliest": earliest},
            )
        if self.end > latest:
            raise InvalidInput(
                f"end: at most a day ahead, at or before {latest.isoformat(timespec='seconds')}",
                code="invalid_range",
                details={"field": "end", "latest": latest},
            )
        if self.bucket is not None:
            buckets = (self.end - self.start) / self.bucket
            if buckets > max_buckets:
                raise InvalidInput(
                    f"bucket: {int(buckets)} buckets asked, at most {max_buckets}: widen the bucket or "
                    "narrow the range",
                    code="too_many_buckets",
                    details={"field": "bucket", "buckets": int(buckets), "max_buckets": max_buckets},
                )


async def readings(conn: AConn, q: ReadingsQuery) -> tuple[list[Row], bool]:
    """Rows of (metric, ts, value, n), bucketed when asked; and whether raw points were capped.

    A query that runs past the connection's statement timeout is a QueryTimeout that says what to do.
    """
    try:
        return await _readings(conn, q)
    except psycopg.errors.QueryCanceled as exc:
        raise QueryTimeout(
            "the readings query took longer than this server allows and was cancelled: "
            "narrow the range or widen the bucket",
            retry_after_s=5,
        ) from exc


async def _readings(conn: AConn, q: ReadingsQuery) -> tuple[list[Row], bool]:
    params: dict[str, Any] = {
        "device_id": q.device_id,
        "metrics": q.metrics,
        "start": q.start,
        "end": q.end,
        "bucket": q.bucket,
        "cap": MAX_RAW_POINTS + 1,
    }
    # One metric (the common case) as an equality: a tighter index scan and one grouping key less.
    single = len(q.metrics) == 1
    params["metric"] = q.metrics[0] if single else None
    metric_match = "metric = %(metric)s" if single else "metric = ANY(%(metrics)s)"
    where = f"device_id = %(device_id)s AND {metric_match} AND ts >= %(start)s AND ts < %(end)s"
    if q.bucket is None:
        cur = await conn.execute(
            f"""SELECT metric, ts, value, 1 AS n FROM readings WHERE {where}
                ORDER BY metric, ts LIMIT %(cap)s""",
            params,
        )
        rows = await cur.fetchall()
        return rows[:MAX_RAW_POINTS], len(rows) > MAX_RAW_POINTS
    group = "%(metric)s::text AS metric" if single else "metric"
    keys = "2" if single else "1, 2"
    if rollups.uses_rollups(q.bucket, q.start, q.end):
        # Whole-hour buckets: hourly rollups, raw rows only at the edges and for the newest hours,
        # so a year of daily buckets costs some 8,760 rollup rows, not a year of raw readings.
        params |= rollups.range_params(q.start, q.end)
        mark = await (await conn.execute(rollups.mark_sql(), params)).fetchone()
        params |= rollups.range_params(q.start, q.end, mark["mark"] if mark else None)
        cur = await conn.execute(rollups.bucketed_sql(q.agg, metric_match, group, keys), params)
        return await cur.fetchall(), False
    cur = await conn.execute(
        f"""SELECT {group}, pw_bucket(%(bucket)s, ts) AS ts, {AGGREGATES[q.agg]} AS value, count(*) AS n
            FROM readings WHERE {where} GROUP BY {keys} ORDER BY {keys}""",
        params,
    )
    return await cur.fetchall(), False


async def events(
    conn: AConn, p: Principal, device_id: str, page: PageRequest, *, type_: str | None = None
) -> list[Row]:
    """Events of a visible device, newest first; a vendor never gets clinical ones, and of the
    others only the whitelisted fields of their data (`schemas.catalogue.VENDOR_EVENT_FIELDS`)."""
    hidden = [] if sees_clinical_data(p) else sorted(CLINICAL_EVENTS)
    cur = await conn.execute(
        """SELECT ts, type, data, boot_id, seq, received_at FROM events
           WHERE device_id = %(device_id)s AND NOT (type = ANY(%(hidden)s))
             AND (%(type)s::text IS NULL OR type = %(type)s)
           ORDER BY ts DESC, seq DESC LIMIT %(limit)s OFFSET %(offset)s""",
        {"device_id": device_id, "hidden": hidden, "type": type_, "limit": page.limit, "offset": page.offset},
    )
    rows = await cur.fetchall()
    if sees_clinical_data(p):
        return rows
    return [r | {"data": vendor_event_data(r["type"], dict(r["data"]))} for r in rows]


async def quarantine(conn: AConn, p: Principal, page: PageRequest, *, reason: str | None = None) -> list[Row]:
    """Quarantined messages, newest first: admins only."""
    require_role(p, ("admin",), "read the quarantine")
    cur = await conn.execute(
        """SELECT quarantine_id, received_at, topic, device_id, reason, detail,
                  substring(payload FROM 1 FOR 2000) AS payload
           FROM quarantine WHERE (%(reason)s::text IS NULL OR reason = %(reason)s)
           ORDER BY quarantine_id DESC LIMIT %(limit)s OFFSET %(offset)s""",
        {"reason": reason, "limit": page.limit, "offset": page.offset},
    )
    return await cur.fetchall()


async def audit(
    conn: AConn,
    p: Principal,
    action: str,
    object_type: str,
    object_id: str,
    *,
    details: dict[str, Any] | None = None,
) -> None:
    """Record who did what (here and in the access audit, as `admin:<action>`)."""
    await access.record(conn, f"admin:{action}", object_type, object_id, detail=details)
    await conn.execute(
        """INSERT INTO audit_log (user_id, action, object_type, object_id, details)
           VALUES (%s, %s, %s, %s, %s)""",
        (p.user_id, action, object_type, object_id, Jsonb(details or {})),
    )


async def alert_provider_org(conn: AConn, alert_id: int) -> int | None:
    """The provider org of an alert (for admins, who act for any org), or None."""
    cur = await conn.execute("SELECT provider_org_id FROM alerts WHERE alert_id = %s", (alert_id,))
    row = await cur.fetchone()
    return None if row is None else int(row["provider_org_id"])


async def provider_org_ids(conn: AConn) -> list[int]:
    """Every provider org, for admin-wide listings."""
    cur = await conn.execute("SELECT org_id FROM orgs WHERE kind = 'provider' ORDER BY org_id")
    return [int(r["org_id"]) for r in await cur.fetchall()]
