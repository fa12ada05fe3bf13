"""Request (`XxxCreate`/`XxxUpdate`) and response (`XxxPublic`) models of the REST API.

A vendor's device view is its own model with no owner field at all, so owner data cannot leak
into it by a forgotten `exclude`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator

from schemas.commands import ClearDtcArgs, PingArgs, RequestTransmissionArgs
from schemas.payloads import DeviceId

Text200 = Annotated[str, StringConstraints(max_length=200)]
Text2000 = Annotated[str, StringConstraints(max_length=2000)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: `next_offset` is null on the last page."""

    items: list[T]
    limit: int
    offset: int
    next_offset: int | None


class MePublic(BaseModel):
    user_id: int
    role: str
    org_id: int | None
    org_kind: str | None
    owner_id: int | None
    display_name: str


class OwnerPublic(BaseModel):
    owner_id: int
    full_name: str
    email: str | None
    phone: str | None
    birth_date: date | None
    address: str | None


class DevicePublic(BaseModel):
    """A device as its provider, its owner or an admin sees it."""

    device_id: str
    kind: str
    model: str
    serial: str
    firmware: str
    provider_org_id: int
    vendor_org_id: int
    online: bool
    status_at: datetime | None
    last_seen_at: datetime | None
    created_at: datetime
    decommissioned_at: datetime | None = Field(description="set once the device is retired for good")
    owner: OwnerPublic | None


class DeviceVendorPublic(BaseModel):
    """A device as its vendor sees it: technical facts only, nothing about its owner."""

    device_id: str
    kind: str
    model: str
    serial: str
    firmware: str
    vendor_org_id: int
    online: bool
    last_seen_at: datetime | None
    decommissioned_at: datetime | None


DeviceView = DevicePublic | DeviceVendorPublic


class DeviceCreate(_Model):
    device_id: DeviceId
    kind: Literal["implant", "vehicle"]
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    vendor_org_id: int = Field(ge=1, le=2**62)
    provider_org_id: int | None = Field(
        default=None, ge=1, le=2**62, description="defaults to the caller's org for provider staff"
    )
    serial: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    firmware: Text200 = ""
    owner_id: int | None = Field(default=None, ge=1, le=2**62)
    heartbeat_s: int | None = Field(default=None, ge=1, le=30 * 86_400)


class DeviceCreated(BaseModel):
    """The new device and its MQTT credentials, shown this once."""

    device: DevicePublic
    mqtt_username: str
    mqtt_password: str
    broker_synced: bool


class DecommissionPublic(BaseModel):
    """A retired device; `broker_synced` is false when its login must still be removed from the broker."""

    device: DeviceView
    broker_synced: bool


class ReadingPoint(BaseModel):
    ts: datetime
    value: float
    n: int = Field(description="readings in the bucket (1 for raw points)")


class SeriesPublic(BaseModel):
    metric: str
    unit: str
    clinical: bool
    points: list[ReadingPoint]


class ReadingsPublic(BaseModel):
    device_id: str
    start: datetime
    end: datetime
    bucket: str | None
    agg: str | None
    truncated: bool = Field(description="raw points were capped; ask for buckets")
    series: list[SeriesPublic]


class EventPublic(BaseModel):
    ts: datetime
    type: str
    data: dict[str, Any]
    boot_id: str
    seq: int
    received_at: datetime


class PingCreate(_Model):
    name: Literal["ping"]
    args: PingArgs = Field(default_factory=PingArgs)


class RequestTransmissionCreate(_Model):
    name: Literal["request_transmission"]
    args: RequestTransmissionArgs = Field(default_factory=RequestTransmissionArgs)


class ClearDtcCreate(_Model):
    name: Literal["clear_dtc"]
    args: ClearDtcArgs = Field(default_factory=ClearDtcArgs)


# One variant per command of the catalogue (a test holds them equal): a bad argument is a 422
# naming the field (`body.ping.args.n`), an unknown command one naming `name`.
CommandCreate = Annotated[
    PingCreate | RequestTransmissionCreate | ClearDtcCreate, Field(discriminator="name")
]


class CommandPublic(BaseModel):
    command_id: str
    device_id: str
    name: str
    args: dict[str, Any]
    status: Literal["pending", "sent", "acknowledged", "done", "failed", "timed_out"]
    detail: str
    result: dict[str, Any]
    requested_by: int | None
    created_at: datetime
    sent_at: datetime | None
    acked_at: datetime | None
    finished_at: datetime | None


class MessageCreate(_Model):
    subject: Text200 = ""
    body: Annotated[str, StringConstraints(min_length=1, max_length=5000)]


class MessagePublic(BaseModel):
    message_id: int
    device_id: str
    owner_id: int | None
    sender_id: int | None
    sender_name: str | None
    subject: str
    body: str
    created_at: datetime


class AppointmentCreate(_Model):
    requested_for: AwareDatetime
    reason: Text2000 = ""


class AppointmentUpdate(_Model):
    """Provider: confirm, decline or propose another time. Owner: accept a proposal or cancel."""

    status: Literal["confirmed", "proposed", "declined", "cancelled"]
    proposed_for: AwareDatetime | None = None
    note: Text2000 = ""


class AppointmentPublic(BaseModel):
    appointment_id: int
    device_id: str
    owner_id: int
    requested_for: datetime
    reason: str
    status: Literal["requested", "proposed", "confirmed", "declined", "cancelled"]
    proposed_for: datetime | None
    note: str
    created_at: datetime
    updated_at: datetime


class TokenCreate(_Model):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)] = "api"
    expires_at: AwareDatetime | None = Field(default=None, description="none: valid until revoked")

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value


class TokenPublic(BaseModel):
    token_id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None


class TokenCreated(TokenPublic):
    """A new token: `token` is shown this once."""

    token: str


class QuarantinePublic(BaseModel):
    quarantine_id: int
    received_at: datetime
    topic: str
    device_id: str | None
    reason: str
    detail: str
    payload: str = Field(description="the first 2,000 bytes, decoded leniently")


class UserPublic(BaseModel):
    """A user as an admin sees it (never a password hash or a token)."""

    user_id: int
    email: str
    display_name: str
    role: str
    org_id: int | None
    disabled_at: datetime | None
