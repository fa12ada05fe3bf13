"""An org's alert plumbing: rules (defaults and its own), webhooks (secret shown once), deliveries."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status

from dashboards import relay_bridge
from dashboards.api import API_PREFIX
from dashboards.api.common import BigId
from dashboards.deps import Conn, CurrentPrincipal
from dashboards.models_relay import (
    DeliveryPublic,
    RuleCreate,
    RulePublic,
    RuleUpdate,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhookUpdate,
)
from relay import store
from relay.egress import EgressPolicy

router = APIRouter(prefix=API_PREFIX, tags=["rules", "webhooks"])
OrgParam = Annotated[int | None, Query(ge=1, le=2**63 - 1, description="admins: the provider org")]


@router.get("/rules")
async def list_rules(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    org_id: OrgParam = None,
    device_kind: Literal["implant", "vehicle"] | None = None,
) -> list[RulePublic]:
    """The global default rules and the org's own (provider staff, admins)."""
    org = await relay_bridge.acting_org(conn, principal, org_id, "see rules")
    rows = await relay_bridge.call(request.app.state.sync_pool, store.list_rules, org, device_kind)
    return [RulePublic.model_validate(r) for r in rows]


@router.post(
    "/rules",
    status_code=status.HTTP_201_CREATED,
    responses={
        409: {"description": "a rule with this key and scope exists"},
        422: {"description": "an invalid field; the message names it (`params.match.code: ...`)"},
    },
)
async def create_rule(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, body: RuleCreate, org_id: OrgParam = None
) -> RulePublic:
    """Add a rule for a device kind, a model or one device of the org.

    Its params are checked against the catalogue of the device kind; its class is derived (a rule
    reading a clinical metric or event is clinical, whatever the request says).
    """
    org = await relay_bridge.acting_org(conn, principal, org_id, "create rules")
    row = await relay_bridge.call(
        request.app.state.sync_pool, store.create_rule, org, body.model_dump(by_alias=True)
    )
    return RulePublic.model_validate(row)


@router.patch(
    "/rules/{rule_id}",
    responses={
        409: {"description": "conflicts with another rule"},
        422: {"description": "an invalid field; the message names it"},
    },
)
async def patch_rule(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    rule_id: BigId,
    body: RuleUpdate,
    org_id: OrgParam = None,
) -> RulePublic:
    """Tune a rule (validated as a new one; clears its recorded errors); tuning a global default
    creates the org's own override."""
    org = await relay_bridge.acting_org(conn, principal, org_id, "change rules")
    changes = body.model_dump(by_alias=True, exclude_none=True)
    row = await relay_bridge.call(request.app.state.sync_pool, store.patch_rule, org, rule_id, changes)
    return RulePublic.model_validate(row)


@router.get("/webhooks")
async def list_webhooks(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, org_id: OrgParam = None
) -> list[WebhookPublic]:
    """The org's webhooks (never their secrets)."""
    org = await relay_bridge.acting_org(conn, principal, org_id, "see webhooks")
    rows = await relay_bridge.call(request.app.state.sync_pool, store.list_webhooks, org)
    return [WebhookPublic.model_validate(r) for r in rows]


@router.post(
    "/webhooks",
    status_code=status.HTTP_201_CREATED,
    responses={
        409: {"description": "the org has its maximum of webhooks"},
        422: {"description": "the URL is refused"},
    },
)
async def create_webhook(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, body: WebhookCreate, org_id: OrgParam = None
) -> WebhookCreated:
    """Register a webhook; its signing secret is in this response only."""
    org = await relay_bridge.acting_org(conn, principal, org_id, "create webhooks")
    settings = request.app.state.settings
    row = await relay_bridge.call(
        request.app.state.sync_pool,
        store.create_webhook,
        org,
        body.url,
        egress=EgressPolicy.from_settings(settings),
        max_per_org=settings.webhooks_per_org_max,
    )
    return WebhookCreated.model_validate(row)


@router.patch("/webhooks/{webhook_id}", responses={422: {"description": "the URL is refused"}})
async def update_webhook(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    webhook_id: BigId,
    body: WebhookUpdate,
    org_id: OrgParam = None,
) -> WebhookPublic:
    """Change a webhook's URL or switch it on or off; the signing secret stays."""
    org = await relay_bridge.acting_org(conn, principal, org_id, "change webhooks")
    row = await relay_bridge.call(
        request.app.state.sync_pool,
        store.update_webhook,
        org,
        webhook_id,
        url=body.url,
        enabled=body.enabled,
        egress=EgressPolicy.from_settings(request.app.state.settings),
    )
    return WebhookPublic.model_validate(row)


@router.delete("/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(
    *, request: Request, principal: CurrentPrincipal, conn: Conn, webhook_id: BigId, org_id: OrgParam = None
) -> None:
    """Delete one of the org's webhooks."""
    org = await relay_bridge.acting_org(conn, principal, org_id, "delete webhooks")
    await relay_bridge.call(request.app.state.sync_pool, store.delete_webhook, org, webhook_id)


@router.get("/deliveries")
async def list_deliveries(
    *,
    request: Request,
    principal: CurrentPrincipal,
    conn: Conn,
    org_id: OrgParam = None,
    state: Literal["pending", "delivered", "dead"] | None = None,
    alert_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[DeliveryPublic]:
    """The org's deliveries, newest first, each with its attempts."""
    org = await relay_bridge.acting_org(conn, principal, org_id, "see deliveries")
    rows = await relay_bridge.call(
        request.app.state.sync_pool, store.list_deliveries, org, state=state, alert_id=alert_id, limit=limit
    )
    return [DeliveryPublic.model_validate(r) for r in rows]
