"""A device's life through the API: registering it, decommissioning it, and the broker's auth after each."""

from __future__ import annotations

import logging
from typing import Any

from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from dashboards.api.common import device_view
from dashboards.models import DecommissionPublic, DeviceCreate, DeviceCreated, DevicePublic
from dashboards.queries import audit, require_role, visible_device
from dashboards.types import AConn, Principal
from pulsewire import db, registry
from pulsewire.errors import Forbidden, InvalidInput, StackError

log = logging.getLogger("pulsewire.dashboards.registration")


async def register_device(state: Any, conn: AConn, p: Principal, body: DeviceCreate) -> DeviceCreated:
    """Register a device for the caller's org (provider staff) or any provider (admin)."""
    require_role(p, ("admin", "provider_staff"), "register devices")
    provider = body.provider_org_id or p.org_id
    if p.role == "provider_staff" and provider != p.org_id:
        raise Forbidden("provider staff register devices for their own org only")
    if provider is None:
        raise InvalidInput("provider_org_id is required", field="provider_org_id", code="missing_provider")
    if body.owner_id is not None:
        await _require_owner_of(conn, body.owner_id, provider)
    sync_pool: ConnectionPool[registry.Conn] = state.sync_pool
    creds, synced = await run_in_threadpool(
        _add_and_sync, sync_pool, state.settings.state_dir, body, provider
    )
    await audit(conn, p, "device.create", "device", creds.device_id)
    view = device_view(p, await visible_device(conn, p, creds.device_id))
    assert isinstance(view, DevicePublic)
    return DeviceCreated(
        device=view,
        mqtt_username=creds.mqtt_username,
        mqtt_password=creds.mqtt_password,
        broker_synced=synced,
    )


async def _require_owner_of(conn: AConn, owner_id: int, provider: int) -> None:
    cur = await conn.execute(
        "SELECT 1 FROM owners WHERE owner_id = %s AND provider_org_id = %s", (owner_id, provider)
    )
    if await cur.fetchone() is None:
        raise InvalidInput(
            f"owner {owner_id} is not in the care of org {provider}", field="owner_id", code="unknown_owner"
        )


def _add_and_sync(
    pool: ConnectionPool[registry.Conn], state_dir: Any, body: DeviceCreate, provider: int
) -> tuple[registry.DeviceCredentials, bool]:
    # The registry is synchronous; this runs in a worker thread with its own connection. Its
    # refusals are pulsewire errors already: an existing id is a DuplicateRecord (a Conflict).
    with db.borrowed_sync(pool) as sync_conn:
        creds = registry.add_device(
            sync_conn,
            body.device_id,
            kind=body.kind,
            model=body.model,
            provider_org_id=provider,
            vendor_org_id=body.vendor_org_id,
            serial=body.serial,
            firmware=body.firmware,
            owner_id=body.owner_id,
            heartbeat_s=body.heartbeat_s,
        )
        sync_conn.commit()
        return creds, registry.sync_broker_auth(sync_conn, state_dir)


async def decommission_device(state: Any, conn: AConn, p: Principal, device_id: str) -> DecommissionPublic:
    """Retire a device for good (admins): its broker login goes, its history stays."""
    await visible_device(conn, p, device_id)
    require_role(p, ("admin",), "decommission devices")
    sync_pool: ConnectionPool[registry.Conn] = state.sync_pool
    synced = await run_in_threadpool(_decommission_and_sync, sync_pool, state.settings.state_dir, device_id)
    await audit(conn, p, "device.decommission", "device", device_id, details={"broker_synced": synced})
    return DecommissionPublic(
        device=device_view(p, await visible_device(conn, p, device_id)), broker_synced=synced
    )


def _decommission_and_sync(pool: ConnectionPool[registry.Conn], state_dir: Any, device_id: str) -> bool:
    with db.borrowed_sync(pool) as sync_conn:
        registry.decommission_device(sync_conn, device_id)  # UnknownRecord: a NotFound
        sync_conn.commit()
        try:
            return registry.sync_broker_auth(sync_conn, state_dir)
        except StackError as exc:
            # Decommissioned all the same; the login goes at the next successful sync.
            log.warning("broker auth not updated after decommissioning %s: %s", device_id, exc)
            return False
