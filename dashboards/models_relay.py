"""API models of alerts, rules, webhooks and deliveries (views built by `relay.views` and `relay.store`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Severity = Literal["red", "yellow", "info"]
AlertClass = Literal["clinical", "technical"]
AlertState = Literal["open", "acknowledged", "resolved"]


class _View(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class AlertDevice(BaseModel):
    device_id: str
    kind: str
    model: str
    serial: str
    firmware: str


class AlertOwner(BaseModel):
    owner_id: int
    name: str | None


class AlertHistoryEntry(BaseModel):
    at: datetime
    action: str
    actor: str
    user_id: int | None
    detail: dict[str, Any]


class AlertPublic(_View):
    """An alert as its provider sees it."""

    alert_id: int
    rule_key: str
    rule_name: str
    severity: Severity
    class_: AlertClass = Field(alias="class")
    state: AlertState
    late: bool
    escalated: bool
    occurrences: int
    device: AlertDevice
    owner: AlertOwner | None
    values: dict[str, Any]
    started_at: datetime | None
    last_seen_at: datetime | None
    ended_at: datetime | None
    opened_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: int | None
    resolved_at: datetime | None
    resolved_by: int | None
    history: list[AlertHistoryEntry] | None = None


class AlertVendorDevice(BaseModel):
    serial: str
    model: str
    firmware: str
    kind: str


class AlertVendorPublic(_View):
    """A technical alert as the device's vendor sees it: no owner, no device id, no clinical values."""

    alert_id: int
    rule_key: str
    rule_name: str
    severity: Severity
    class_: Literal["technical"] = Field(alias="class")
    state: AlertState
    late: bool
    device: AlertVendorDevice
    values: dict[str, Any]
    started_at: datetime | None
    opened_at: datetime | None
    resolved_at: datetime | None


AlertView = AlertPublic | AlertVendorPublic


class AlertPage(BaseModel):
    """Alerts newest first; pass `next_before_id` as `before_id` for the next page."""

    items: list[AlertView]
    limit: int
    next_before_id: int | None


RuleKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]+\.[a-z0-9_.]+$", max_length=200)]
RuleName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
RuleKind = Literal["threshold", "outside", "jump", "drop", "absence", "event", "count", "anomaly"]


class RulePublic(_View):
    """A rule, with what went wrong when it was last evaluated (a failing rule is skipped, not fatal)."""

    rule_id: int
    key: str
    name: str
    device_kind: str
    model: str | None
    device_id: str | None
    provider_org_id: int | None = Field(description="null: a global default")
    kind: str
    params: dict[str, Any]
    severity: Severity
    class_: AlertClass = Field(
        alias="class", description="clinical whenever the rule reads a clinical metric or event"
    )
    auto_resolve: bool
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_error: str | None = Field(description="why the rule last failed on a device (it was skipped there)")
    error_count: int = Field(description="failed evaluations since the rule was created or last changed")
    last_error_at: datetime | None


class RuleCreate(_View):
    """A new rule; `params` are checked for its kind and device kind (422 names the field).

    `class` is derived: a rule reading a clinical metric or event is clinical whatever is asked.
    """

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    key: RuleKey
    name: RuleName
    device_kind: Literal["implant", "vehicle"]
    kind: RuleKind
    severity: Severity
    class_: AlertClass = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    device_id: Annotated[str, StringConstraints(max_length=64)] | None = None
    auto_resolve: bool = False
    enabled: bool = True


class RuleUpdate(_View):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    name: RuleName | None = None
    params: dict[str, Any] | None = None
    severity: Severity | None = None
    class_: AlertClass | None = Field(default=None, alias="class")
    auto_resolve: bool | None = None
    enabled: bool | None = None


WebhookUrl = Annotated[str, StringConstraints(pattern=r"^https?://", max_length=2000)]


class WebhookCreate(BaseModel):
    """A new webhook: an https URL whose host resolves to global addresses only."""

    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl


class WebhookUpdate(BaseModel):
    """A change of a webhook: its URL (checked as on create), or on/off."""

    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl | None = None
    enabled: bool | None = None


class WebhookPublic(BaseModel):
    webhook_id: int
    org_id: int
    url: str
    enabled: bool
    created_at: datetime


class WebhookCreated(WebhookPublic):
    """A new webhook: `secret` (to check signatures) is shown this once."""

    secret: str


class DeliveryAttempt(BaseModel):
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float | None


class DeliveryPublic(BaseModel):
    delivery_id: int
    alert_id: int
    event: str
    audience: str
    channel: str
    webhook_id: int | None
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[DeliveryAttempt]
