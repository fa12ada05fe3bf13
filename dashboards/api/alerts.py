"""Alerts: the caller's inbox, ack, resolve, live SSE.

Which alerts a caller sees is `relay.visibility` (provider: its org's; vendor: technical ones of
its devices; admin: all), the same for the list, one alert and the live stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter
from starlette.background import BackgroundTask

from dashboards import access, relay_bridge
from dashboards.api import API_PREFIX
from dashboards.api.common import BigId
from dashboards.deps import Conn, Credential, CurrentPrincipal, still_valid
from dashboards.errors import ErrorBody
from dashboards.models_relay import AlertPage, AlertState, AlertView, Severity
from dashboards.queries import alert_provider_org, sees_owner_data
from dashboards.types import AConn, Principal
from pulsewire import audit
from pulsewire.errors import Forbidden, NotFound
from relay import sse, store

router = APIRouter(prefix=API_PREFIX, tags=["alerts"])
HEARTBEAT_S = 15.0
_IDLE: dict[str, Any] = {"event": "idle"}  # nothing came within the wait: time to check or beat
_views: TypeAdapter[AlertView] = TypeAdapter(AlertView)


@router.get("/alerts")
async def list_alerts(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    state: AlertState | None = None,
    severity: Severity | None = None,
    device_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> AlertPage:
    """The caller's alerts, newest first, filtered by state, severity or device."""
    views: list[dict[str, Any]] = await relay_bridge.call(
        request.app.state.sync_pool,
        store.list_alerts,
        relay_bridge.inbox_viewer(principal),
        state=state,
        severity=severity,
        device_id=device_id,
        limit=limit,
        before_id=before_id,
    )
    await _record_read(conn, principal, "alert_list", None, views)
    next_before = int(views[-1]["alert_id"]) if len(views) == limit else None
    return AlertPage(
        items=[_views.validate_python(v) for v in views], limit=limit, next_before_id=next_before
    )


@router.get(
    "/alerts/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}},
        429: {"model": ErrorBody, "description": "too many live streams (per user or on this server)"},
    },
)
async def stream_alerts(*, request: Request, principal: CurrentPrincipal) -> StreamingResponse:
    """Server-sent events: `event: opened|acknowledged|escalated|resolved|...`, `data:` the alert view.

    The same alerts as GET /alerts, as they change (an admin's: every org's). The stream ends within
    seconds of its credential ending (logout, revoked token, disabled user).
    """
    viewer = relay_bridge.inbox_viewer(principal)
    hub: sse.AlertHub = request.app.state.alert_hub
    subscription = hub.subscribe(principal.user_id, viewer)  # StreamLimitReached: 429
    credential: Credential = request.state.credential
    watch = _CredentialWatch(request, credential, principal)
    return StreamingResponse(
        _sse_body(subscription, watch),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        # Also when the body never starts (the client left at once), the slot is given back.
        background=BackgroundTask(subscription.close),
    )


class _CredentialWatch:
    """Asks the normal authentication path, every few seconds, whether the stream's caller still is."""

    def __init__(self, request: Request, credential: Credential, principal: Principal) -> None:
        self._request, self._credential, self._principal = request, credential, principal
        self.interval_s: float = request.app.state.settings.sse_recheck_interval_s

    async def valid(self) -> bool:
        return await still_valid(self._request, self._credential, self._principal)


async def _sse_body(subscription: sse.Subscription, watch: _CredentialWatch) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    next_check = loop.time() + watch.interval_s
    next_heartbeat = loop.time() + HEARTBEAT_S
    try:
        yield "retry: 3000\n\n"
        while True:
            wait_s = max(0.0, min(next_check, next_heartbeat) - loop.time())
            try:
                item = await asyncio.wait_for(subscription.get(), wait_s)
            except TimeoutError:
                item = _IDLE
            if item is None:  # the hub ended it: too slow, or its feed was lost; the client reconnects
                return
            if loop.time() >= next_check:
                if not await watch.valid():
                    return
                next_check = loop.time() + watch.interval_s
            if item is _IDLE:
                if loop.time() >= next_heartbeat:
                    next_heartbeat = loop.time() + HEARTBEAT_S
                    yield ": heartbeat\n\n"
                continue
            yield _frame(item)
    finally:
        subscription.close()


def _frame(item: dict[str, Any]) -> str:
    if item["event"] == "ready":  # LISTEN is in place: nothing committed from now on is missed
        return ": connected\n\n"
    data = json.dumps(item["alert"], separators=(",", ":"), default=str)
    return f"event: {item['event']}\ndata: {data}\n\n"


@router.get("/alerts/{alert_id}")
async def get_alert(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, alert_id: BigId
) -> AlertView:
    """One alert in the caller's view; the provider's carries its history."""
    viewer = relay_bridge.inbox_viewer(principal)
    view = await relay_bridge.call(request.app.state.sync_pool, store.get_alert, viewer, alert_id)
    await _record_read(conn, principal, "alert", str(alert_id), [view])
    return _views.validate_python(view)


async def _record_read(
    conn: AConn, p: Principal, object_type: str, object_id: str | None, views: list[dict[str, Any]]
) -> None:
    # The provider's view (an admin's and an owner's too) names the owner; a vendor's has none.
    if sees_owner_data(p):
        owners = audit.owners_of(v["owner"] for v in views if v.get("owner"))
        await access.record(conn, audit.READ, object_type, object_id, owner_ids=owners)


async def _change(
    request: Request,
    principal: Principal,
    conn: AConn,
    alert_id: int,
    action: Literal["acknowledge", "resolve"],
) -> AlertView:
    viewer = relay_bridge.inbox_viewer(principal)
    pool = request.app.state.sync_pool
    if viewer.audience not in ("provider", "admin"):
        await relay_bridge.call(pool, store.get_alert, viewer, alert_id)  # NotFound unless visible
        raise Forbidden(f"only the provider may {action} alerts")
    org = viewer.org_id if viewer.audience == "provider" else await alert_provider_org(conn, alert_id)
    if org is None:
        raise NotFound(f"no alert {alert_id}")
    fn = store.acknowledge if action == "acknowledge" else store.resolve
    view = await relay_bridge.call(pool, fn, org, alert_id, principal.user_id)
    return _views.validate_python(view)


@router.post("/alerts/{alert_id}/ack", responses={409: {"description": "already acknowledged or resolved"}})
async def ack_alert(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, alert_id: BigId
) -> AlertView:
    """Acknowledge an open alert (provider staff, admins)."""
    return await _change(request, principal, conn, alert_id, "acknowledge")


@router.post("/alerts/{alert_id}/resolve", responses={409: {"description": "already resolved"}})
async def resolve_alert(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, alert_id: BigId
) -> AlertView:
    """Resolve an alert (provider staff, admins)."""
    return await _change(request, principal, conn, alert_id, "resolve")
