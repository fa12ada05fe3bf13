"""Devices: list, register, one device, its readings and its events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status

from dashboards import registration
from dashboards.api import API_PREFIX
from dashboards.api.common import device_view, page_of
from dashboards.deps import Conn, CurrentPrincipal, Paging, readings_slot
from dashboards.errors import ErrorBody
from dashboards.models import (
    DeviceCreate,
    DeviceCreated,
    DeviceView,
    EventPublic,
    Page,
    ReadingPoint,
    ReadingsPublic,
    SeriesPublic,
)
from dashboards.queries import ReadingsQuery, events, list_devices, parse_bucket, readable_metrics, readings
from dashboards.queries import visible_device as device_of
from pulsewire.errors import InvalidInput
from pulsewire.settings import Settings

router = APIRouter(prefix=API_PREFIX, tags=["devices"])


@router.get("/devices")
async def get_devices(
    *,
    principal: CurrentPrincipal,
    conn: Conn,
    page: Paging,
    kind: Literal["implant", "vehicle"] | None = None,
) -> Page[DeviceView]:
    """The devices the caller sees: their org's (provider, vendor), their own (owner), all (admin)."""
    rows = await list_devices(conn, principal, page, kind=kind)
    return page_of(rows, page, lambda r: device_view(principal, r))


@router.post("/devices", status_code=status.HTTP_201_CREATED)
async def create_device(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, body: DeviceCreate
) -> DeviceCreated:
    """Register a device (admin, provider staff); its MQTT password is in this response only."""
    return await registration.register_device(request.app.state, conn, principal, body)


@router.get("/devices/{device_id}")
async def get_device(*, principal: CurrentPrincipal, conn: Conn, device_id: str) -> DeviceView:
    """One device, in the caller's view."""
    return device_view(principal, await device_of(conn, principal, device_id))


def _utc(value: datetime | None) -> datetime | None:
    # A time without a zone is taken as UTC, the zone of every stored timestamp.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _query(
    settings: Settings,
    device_id: str,
    metrics: list[str],
    *,
    start: datetime | None,
    end: datetime | None,
    bucket: str | None,
    agg: str,
) -> ReadingsQuery:
    """The validated query: default range the last 24 h, capped to retention and bucket count."""
    try:
        end = _utc(end) or datetime.now(UTC)
        start = _utc(start) or end - timedelta(hours=24)
        query = ReadingsQuery(device_id, metrics, start, end, parse_bucket(bucket) if bucket else None, agg)
        query.check(
            now=datetime.now(UTC),
            retention=timedelta(days=settings.retention_days),
            max_buckets=settings.readings_buckets_max,
        )
    except OverflowError as exc:  # a default or a bound computed next to year 1 or 9999
        raise InvalidInput("start/end out of range", code="invalid_range") from exc
    return query


@router.get(
    "/devices/{device_id}/readings",
    responses={
        429: {"model": ErrorBody, "description": "too many readings queries of this user at once"},
        503: {"model": ErrorBody, "description": "the query ran too long and was cancelled"},
    },
)
async def get_readings(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    device_id: str,
    metric: Annotated[list[str], Query(description="metric name(s); repeat or comma-separate")] = [],  # noqa: B006 (FastAPI copies defaults)
    start: datetime | None = None,
    end: datetime | None = None,
    bucket: Annotated[str | None, Query(description="bucket width: 30s, 5m, 1h, 1d", max_length=16)] = None,
    agg: Literal["avg", "min", "max", "last"] = "avg",
) -> ReadingsPublic:
    """Readings of one device in [start, end) (default: the last 24 h), within retention: raw, or bucketed."""
    device = await device_of(conn, principal, device_id)
    names = [n.strip() for item in metric for n in item.split(",") if n.strip()]
    chosen = readable_metrics(principal, device["kind"], names)
    settings = request.app.state.settings
    query = _query(
        settings, device_id, [m.name for m in chosen], start=start, end=end, bucket=bucket, agg=agg
    )
    with readings_slot(request, principal):
        rows, truncated = await readings(conn, query)
    points: dict[str, list[ReadingPoint]] = {m.name: [] for m in chosen}
    for row in rows:
        points[row["metric"]].append(ReadingPoint(ts=row["ts"], value=row["value"], n=row["n"]))
    series = [
        SeriesPublic(metric=m.name, unit=m.unit, clinical=m.clinical, points=points[m.name]) for m in chosen
    ]
    return ReadingsPublic(
        device_id=device_id,
        start=query.start,
        end=query.end,
        bucket=bucket,
        agg=agg if bucket else None,
        truncated=truncated,
        series=series,
    )


@router.get("/devices/{device_id}/events")
async def get_events(
    *,
    principal: CurrentPrincipal,
    conn: Conn,
    page: Paging,
    device_id: str,
    type: Annotated[str | None, Query(max_length=64)] = None,
) -> Page[EventPublic]:
    """Events of one device, newest first; a vendor sees technical events only."""
    await device_of(conn, principal, device_id)
    rows = await events(conn, principal, device_id, page, type_=type)
    return page_of(rows, page, EventPublic.model_validate)
