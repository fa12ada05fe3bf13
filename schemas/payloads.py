"""Payloads on the wire, schema v1 (JSON, UTF-8).

Structural rules live here; rules that need the device registry or the server clock
(unknown metric for the device's kind, range, future timestamps, topic mismatch) are
applied by ingest, which names each failure with a `QuarantineReason`.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.commands import CommandName
from schemas.topics import DEVICE_ID_PATTERN

TELEMETRY_SCHEMA = "pulsewire.telemetry/1"
EVENT_SCHEMA = "pulsewire.event/1"
STATUS_SCHEMA = "pulsewire.status/1"
COMMAND_SCHEMA = "pulsewire.command/1"
COMMAND_REPLY_SCHEMA = "pulsewire.command_reply/1"

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_READINGS = 10_000
INT64_LIMIT = 2**63  # seq and any integer bound for a bigint column: 0 <= n < INT64_LIMIT

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
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
    NUL_IN_STRING = "nul_in_string"  # PostgreSQL text and jsonb cannot hold U+0000
    TOO_OLD = "too_old"  # older than retention: it would be dropped, or open a partition or chunk of its own
    RATE_LIMITED = "rate_limited"  # beyond the device's message budget
    DB_REJECTED = "db_rejected"  # passed validation, refused by PostgreSQL (the batch's others are stored)


def _nul_at(value: Any) -> list[str] | None:
    """Where a NUL is in a decoded JSON value (in a string or a key), or None; paths built only when found."""
    if isinstance(value, str):
        return [] if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = [] if "\x00" in key else _nul_at(item)
            if found is not None:
                return [key, *found]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _nul_at(item)
            if found is not None:
                return [f"[{i}]", *found]
    return None


def _refuse_nul(value: Any) -> None:
    found = _nul_at(value)
    if found is not None:
        # The path goes into a quarantine detail, stored as text: no NUL in it either.
        path = ".".join(found).replace(".[", "[").replace("\x00", "\\0") or "payload"
        raise PydanticCustomError("nul_in_string", "{path}: string contains NUL", {"path": path})


def _check_numbers(value: Any, path: str) -> None:
    """Integers must fit int64 and numbers be finite (what PostgreSQL and the rules can use)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -INT64_LIMIT <= value < INT64_LIMIT:
            raise PydanticCustomError("int_out_of_range", "{path}: integer outside int64", {"path": path})
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError(
                "non_finite", "{path}: {value} is not finite", {"path": path, "value": value}
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_numbers(item, f"{path}[{i}]")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Message(_Payload):
    """A message a device sends: no NUL in any string, checked before the fields so it is named as such."""

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        _refuse_nul(data)
        return data


class Reading(_Payload):
    """One sample of one metric. NaN and Infinity pass here and are rejected by ingest by name."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)

    ts: AwareDatetime
    metric: MetricName
    value: float


class TelemetryPayload(_Message):
    """A batch of readings: `pw/v1/dev/{device_id}/telemetry`."""

    schema_: Literal["pulsewire.telemetry/1"] = Field(alias="schema")
    device_id: DeviceId
    boot_id: BootId
    seq: int = Field(ge=0, lt=INT64_LIMIT)
    sent_at: AwareDatetime
    readings: list[Reading] = Field(min_length=1)


class EventPayload(_Message):
    """A discrete event: `pw/v1/dev/{device_id}/event`."""

    schema_: Literal["pulsewire.event/1"] = Field(alias="schema")
    device_id: DeviceId
    boot_id: BootId
    seq: int = Field(ge=0, lt=INT64_LIMIT)
    ts: AwareDatetime
    type: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _numbers_fit(cls, data: dict[str, Any]) -> dict[str, Any]:
        _check_numbers(data, "data")
        return data


class StatusPayload(_Message):
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
