"""Validation of one MQTT message: pure, fast, and total (every input gives a value, never an error).

`validate(topic, payload, kinds, now=..., max_future_skew_s=..., retention_days=...)` returns a
`Telemetry`, `Event` or `Status` to store, or a `Quarantined` naming the `QuarantineReason`;
`validate_in(topic, payload, kinds, window)` does the same with the accepted time `Window` computed
once for many messages (ingest's network thread renews it every few milliseconds). Structural
rules (NUL in a string, seq within int64) come from the pydantic models in `schemas.payloads`; the rules
that need the device registry (`kinds`: device id → kind) or the server clock (future, or older than
retention) are applied here. A message with one bad reading is quarantined whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from ingest._fastjson import FastTelemetry, fast_telemetry
from schemas.catalogue import CATALOGUE, EVENT_TYPES, DeviceKind
from schemas.payloads import (
    MAX_PAYLOAD_BYTES,
    MAX_READINGS,
    EventPayload,
    QuarantineReason,
    StatusPayload,
    TelemetryPayload,
)
from schemas.topics import parse_uplink

_MAX_DETAIL_ITEMS = 3


class ReadingLike(Protocol):
    """A reading as decoded by either path (`schemas.payloads.Reading` or the msgspec fast path)."""

    @property
    def ts(self) -> datetime: ...
    @property
    def metric(self) -> str: ...
    @property
    def value(self) -> float: ...


@dataclass(slots=True)  # not frozen: one is built per message, and frozen's __init__ costs 2x
class Telemetry:
    """An accepted batch of readings."""

    device_id: str
    boot_id: str
    seq: int
    readings: Sequence[ReadingLike]
    # Formatted once here, in the network thread, so the writer thread only sends them:
    copy_rows: bytes  # the readings as `COPY readings (ts, device_id, metric, value)` text
    low: datetime  # earliest and latest reading timestamps
    high: datetime


@dataclass(frozen=True, slots=True)
class Event:
    """An accepted discrete event."""

    device_id: str
    boot_id: str
    seq: int
    ts: datetime
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Status:
    """An accepted presence message; `ts` is None when the device sent a bare `online`/`offline`."""

    device_id: str
    online: bool
    ts: datetime | None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A message set aside, with the reason and a human-readable detail."""

    topic: str
    device_id: str | None
    reason: QuarantineReason
    detail: str
    payload: bytes
    # False for a flooding device's excess beyond what quarantine keeps of it: the row counts such
    # messages (one row a device and topic, `copies` of them) with their size, without the payload.
    payload_kept: bool = True


Validated = Telemetry | Event | Status | Quarantined
# Builds the `Quarantined` of the message being checked.
Reject = Callable[[QuarantineReason, str], Quarantined]


@dataclass(frozen=True, slots=True)
class Window:
    """Timestamps accepted: after `oldest` (retention) and up to `latest` (the allowed clock skew)."""

    oldest: datetime
    latest: datetime

    @classmethod
    def around(cls, now: datetime, *, max_future_skew_s: int, retention_days: int) -> Window:
        return cls(now - timedelta(days=retention_days), now + timedelta(seconds=max_future_skew_s))


# The catalogue by the kind's name, as the registry (`kinds`) gives it: no enum lookup per message.
_METRICS_OF: dict[str, Mapping[str, Any]] = {kind.value: metrics for kind, metrics in CATALOGUE.items()}


def validate(
    topic: str,
    payload: bytes,
    kinds: Mapping[str, str],
    *,
    now: datetime,
    max_future_skew_s: int,
    retention_days: int,
) -> Validated:
    """Check one message against the contract; see the module docstring."""
    window = Window.around(now, max_future_skew_s=max_future_skew_s, retention_days=retention_days)
    return validate_in(topic, payload, kinds, window)


def validate_in(topic: str, payload: bytes, kinds: Mapping[str, str], window: Window) -> Validated:
    """`validate` with the accepted time window given."""
    where = parse_uplink(topic)
    if where is None:
        detail = "not a pw/v1/dev/{device_id}/{telemetry|event|status} topic"
        return Quarantined(topic, None, QuarantineReason.UNKNOWN_TOPIC, detail, payload)
    device_id, kind = where

    def reject(reason: QuarantineReason, detail: str) -> Quarantined:
        return Quarantined(topic, device_id, reason, detail, payload)

    if len(payload) > MAX_PAYLOAD_BYTES:
        # Counted without parsing: a payload this large is not parsed at all.
        if payload.count(b'"metric"') > MAX_READINGS:
            return reject(QuarantineReason.TOO_MANY_READINGS, f"more than {MAX_READINGS} readings")
        return reject(QuarantineReason.OVERSIZED, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    if kind == "telemetry":
        return _telemetry(payload, device_id, kinds, window, reject)
    if kind == "event":
        return _event(payload, device_id, kinds, window, reject)
    return _status(payload, device_id, kinds, reject)


# Error types raised by the payload models' own checks, with their reasons.
_NAMED_ERRORS = {
    "nul_in_string": QuarantineReason.NUL_IN_STRING,
    "non_finite": QuarantineReason.NON_FINITE,
    "int_out_of_range": QuarantineReason.INVALID_PAYLOAD,
}


def _parse_error(exc: ValidationError) -> tuple[QuarantineReason, str]:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return QuarantineReason.MALFORMED_JSON, errors[0]["msg"]
    for e in errors:
        named = _NAMED_ERRORS.get(e["type"])
        if named is not None:  # the message names its path in the payload
            return named, e["msg"]
    for e in errors:
        if e["loc"][:1] == ("schema",):
            return QuarantineReason.WRONG_SCHEMA, f"schema: {e['msg']}"
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    return QuarantineReason.INVALID_PAYLOAD, f"{where}: {first['msg']}"


def _identity(device_id: str, claimed: str, kinds: Mapping[str, str], reject: Reject) -> Quarantined | str:
    """The device's kind, or the quarantine for a mismatched or unregistered device."""
    if claimed != device_id:
        return reject(QuarantineReason.DEVICE_MISMATCH,
                      f"topic says {device_id!r}, payload says {claimed!r}")  # fmt: skip
    kind = kinds.get(device_id)
    if kind is None:
        return reject(QuarantineReason.UNREGISTERED_DEVICE, f"no device {device_id!r}")
    return kind


def _telemetry(
    payload: bytes, device_id: str, kinds: Mapping[str, str], window: Window, reject: Reject
) -> Telemetry | Quarantined:
    # The common case in C; None means pydantic decides (and explains what is wrong).
    msg: FastTelemetry | TelemetryPayload | None = fast_telemetry(payload, device_id)
    if msg is None:
        try:
            msg = TelemetryPayload.model_validate_json(payload)
        except ValidationError as exc:
            return reject(*_parse_error(exc))
    kind = _identity(device_id, msg.device_id, kinds, reject)
    if isinstance(kind, Quarantined):
        return kind
    if len(msg.readings) > MAX_READINGS:
        return reject(QuarantineReason.TOO_MANY_READINGS,
                      f"{len(msg.readings)} readings > {MAX_READINGS}")  # fmt: skip
    bad = _bad_readings(msg.readings, _METRICS_OF[kind], window)
    if bad:
        reason = bad[0][1]
        shown = "; ".join(f"readings[{i}] {why}" for i, _, why in bad[:_MAX_DETAIL_ITEMS])
        return reject(reason, f"{len(bad)} of {len(msg.readings)} readings bad: {shown}")
    rows, low, high = _copy_rows(device_id, msg.readings)
    return Telemetry(device_id, msg.boot_id, msg.seq, msg.readings, rows, low, high)


def _copy_rows(device_id: str, readings: Sequence[ReadingLike]) -> tuple[bytes, datetime, datetime]:
    """COPY text of valid readings (ids and metric names are validated: nothing to escape)."""
    if len(readings) == 1:  # the common case of many devices, on the hot path
        r = readings[0]
        return f"{r.ts.isoformat()}\t{device_id}\t{r.metric}\t{r.value!r}\n".encode(), r.ts, r.ts
    lines: list[str] = []
    last_ts, stamp = None, ""
    for r in readings:
        if r.ts is not last_ts and r.ts != last_ts:  # readings of a message mostly share a timestamp
            last_ts, stamp = r.ts, r.ts.isoformat()
        lines.append(f"{stamp}\t{device_id}\t{r.metric}\t{r.value!r}\n")
    times = [r.ts for r in readings]
    return "".join(lines).encode(), min(times), max(times)


def _bad_readings(
    readings: Sequence[ReadingLike], catalogue: Mapping[str, Any], window: Window
) -> list[tuple[int, QuarantineReason, str]]:
    """(index, reason, detail) of every bad reading; the hot loop, so plain and branch-light."""
    bad: list[tuple[int, QuarantineReason, str]] = []
    oldest, limit = window.oldest, window.latest
    for i, r in enumerate(readings):
        metric = catalogue.get(r.metric)
        value = r.value
        if metric is None:
            bad.append((i, QuarantineReason.UNKNOWN_METRIC, f"{r.metric}: not in the catalogue"))
        elif not math.isfinite(value):
            bad.append((i, QuarantineReason.NON_FINITE, f"{r.metric}: {value}"))
        elif not metric.low <= value <= metric.high:
            bad.append((i, QuarantineReason.OUT_OF_RANGE,
                        f"{r.metric}: {value} outside [{metric.low}, {metric.high}]"))  # fmt: skip
        elif r.ts > limit:
            bad.append((i, QuarantineReason.FUTURE_TIMESTAMP, f"{r.metric}: ts {r.ts.isoformat()} is ahead"))
        elif r.ts < oldest:
            bad.append((i, QuarantineReason.TOO_OLD, f"{r.metric}: ts {r.ts.isoformat()} is past retention"))
    return bad


def _event(
    payload: bytes, device_id: str, kinds: Mapping[str, str], window: Window, reject: Reject
) -> Event | Quarantined:
    try:
        msg = EventPayload.model_validate_json(payload)
    except ValidationError as exc:
        return reject(*_parse_error(exc))
    kind = _identity(device_id, msg.device_id, kinds, reject)
    if isinstance(kind, Quarantined):
        return kind
    if msg.type not in EVENT_TYPES[DeviceKind(kind)]:
        return reject(QuarantineReason.UNKNOWN_EVENT_TYPE, f"{msg.type!r} is not a {kind} event")
    if msg.ts > window.latest:
        return reject(QuarantineReason.FUTURE_TIMESTAMP, f"ts {msg.ts.isoformat()} is ahead")
    if msg.ts < window.oldest:
        return reject(QuarantineReason.TOO_OLD, f"ts {msg.ts.isoformat()} is past retention")
    return Event(device_id, msg.boot_id, msg.seq, msg.ts, msg.type, msg.data)


def _status(payload: bytes, device_id: str, kinds: Mapping[str, str], reject: Reject) -> Status | Quarantined:
    bare = payload.strip()
    if bare in (b"online", b"offline"):
        claimed, online, ts = device_id, bare == b"online", None
    else:
        try:
            msg = StatusPayload.model_validate_json(payload)
        except ValidationError as exc:
            return reject(*_parse_error(exc))
        claimed, online, ts = msg.device_id, msg.state == "online", msg.ts
    kind = _identity(device_id, claimed, kinds, reject)
    if isinstance(kind, Quarantined):
        return kind
    return Status(device_id, online, ts)
