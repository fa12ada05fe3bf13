"""Payloads on the wire, schema v1 (JSON, UTF-8).

Structural rules live here; rules that need the device registry or the server clock
(unknown metric for the device's kind, range, future timestamps, topic mismatch) are
applied by ingest, which names each failure with a `QuarantineReason`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.commands import CommandName

TELEMETRY_SCHEMA = "pulsewire.telemetry/1"
EVENT_SCHEMA = "pulsewire.event/1"
STATUS_SCHEMA = "pulsewire.status/1"
COMMAND_SCHEMA = "pulsewire.command/1"
COMMAND_REPLY_SCHEMA = "pulsewire.command_reply/1"

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS = 10_000

DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
BootId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetricName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class QuarantineReason(StrEnum):
    """Why a message was set aside instead of stored; machine-readable."""

    MALFORMED_JSON = "malformed_json"
    WRONG_SCHEMA = "wrong_schema"
    INVALID_PAYLOAD = "invalid_payload"
    OVERSIZED = "oversized"
    TOO_MANY_READINGS = "too_many_readings"
    DEVICE_MISMATCH = "device_mismatch"
    UNREGISTERED_DEVICE = "unregistered_device"
    UNKNOWN_METRIC = "unknown_metric"
    OUT_OF_RANGE = "out_of_range"
    NON_FINITE = "non_finite"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_TOPIC = "unknown_topic"


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Reading(_Payload):
    """One sample of one metric. NaN and Infinity pass here and are rejected by ingest by name."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)

    ts: AwareDatetime
    metric: MetricName
    value: float


class TelemetryPayload(_Payload):
    """A batch of readings: `pw/v1/dev/{device_id}/telemetry`."""

    schema_: Literal["pulsewire.telemetry/1"] = Field(alias="schema")
    device_id: DeviceId
    boot_id: BootId
    seq: int = Field(ge=0)
    sent_at: AwareDatetime
    readings: list[Reading] = Field(min_length=1)


class EventPayload(_Payload):
    """A discrete event: `pw/v1/dev/{device_id}/event`."""

    schema_: Literal["pulsewire.event/1"] = Field(alias="schema")
    device_id: DeviceId
    boot_id: BootId
    seq: int = Field(ge=0)
    ts: AwareDatetime
    type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    data: dict[str, Any] = Field(default_factory=dict)


class StatusPayload(_Payload):
    """Presence: `pw/v1/dev/{device_id}/status`, retained. Bare `online`/`offline` is accepted too."""

    schema_: Literal["pulsewire.status/1"] = Field(alias="schema")
    device_id: DeviceId
    state: Literal["online", "offline"]
    ts: AwareDatetime | None = None
    boot_id: BootId | None = None
    firmware: str | None = None


class CommandRequest(_Payload):
    """A command to a device: `pw/v1/dev/{device_id}/cmd`, with MQTT 5 correlation data."""

    schema_: Literal["pulsewire.command/1"] = Field(alias="schema", default="pulsewire.command/1")
    command_id: str
    name: CommandName
    args: dict[str, Any] = Field(default_factory=dict)
    sent_at: AwareDatetime


class CommandReply(_Payload):
    """A device's answer: `pw/v1/dev/{device_id}/cmd/reply`, same correlation data."""

    schema_: Literal["pulsewire.command_reply/1"] = Field(alias="schema", default="pulsewire.command_reply/1")
    command_id: str
    status: Literal["ok", "error"]
    detail: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


PAYLOAD_MODELS: dict[str, type[BaseModel]] = {
    TELEMETRY_SCHEMA: TelemetryPayload,
    EVENT_SCHEMA: EventPayload,
    STATUS_SCHEMA: StatusPayload,
    COMMAND_SCHEMA: CommandRequest,
    COMMAND_REPLY_SCHEMA: CommandReply,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every payload, keyed by its schema tag."""
    return {tag: model.model_json_schema(by_alias=True) for tag, model in PAYLOAD_MODELS.items()}
