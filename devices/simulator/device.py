"""A simulated device's identity and the exact bytes it puts on the wire.

`SimDevice` keeps the per-boot sequence counter, builds telemetry, event and status payloads
(schema v1) and answers commands. It does no I/O; `Message` records what was sent and what the
server should make of it, so tests can compare the database with what the device published.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from devices.simulator.signals import Sample
from schemas import topics
from schemas.commands import COMMANDS, CommandArgs, RequestTransmissionArgs, parse_args
from schemas.payloads import (
    EVENT_SCHEMA,
    STATUS_SCHEMA,
    TELEMETRY_SCHEMA,
    CommandReply,
    CommandRequest,
)

STORE = "store"  # expected fate of a message: stored; otherwise a QuarantineReason value or DUPLICATE
DUPLICATE = "duplicate"


def iso(ts: datetime) -> str:
    """UTC timestamp with milliseconds and a `Z`, as devices send them."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def on_wire(ts: datetime) -> datetime:
    """`ts` as the server reads it back from `iso(ts)`: milliseconds, no finer."""
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class Message:
    """One planned publish: where, what, when (event time) and what the server should do with it.

    `expect` is "store", "duplicate", or the quarantine reason(s) ingest should give it
    (a tuple when the contract allows either of two, e.g. 10,001 readings are also > 256 KiB).
    `readings`/`event` are what a correct ingest stores from it.
    """

    topic: str
    payload: bytes
    send_at: datetime
    expect: str | tuple[str, ...] = STORE
    readings: tuple[Sample, ...] = ()
    event: tuple[datetime, str] | None = None
    as_service: bool = False  # published with the service login (topics a device may not use)
    action: str = ""  # a link action instead of a publish: "drop" (reconnects) or "vanish"

    def retimed(self, send_at: datetime) -> Message:
        """The same bytes, sent at another (event) time."""
        return replace(self, send_at=send_at)

    @property
    def stored(self) -> bool:
        """Whether a correct ingest stores this message's rows."""
        return self.expect == STORE


@dataclass
class SimDevice:
    """Identity and sequence state of one device."""

    device_id: str
    kind: str
    model: str = ""
    firmware: str = "sim-1.0"
    boot_id: str = field(default_factory=lambda: secrets.token_hex(4))
    seq: int = 0
    cleared_dtcs: int = 0

    def reboot(self, boot_id: str | None = None) -> None:
        """A power cycle: a new boot_id, and seq starts again at 0."""
        self.boot_id = boot_id or secrets.token_hex(4)
        self.seq = 0

    def next_seq(self) -> int:
        """The seq of the next message of this boot."""
        seq = self.seq
        self.seq += 1
        return seq

    def telemetry(self, readings: list[Sample], sent_at: datetime, *, expect: str = STORE) -> Message:
        """A telemetry batch; readings are (ts, metric, value)."""
        body = {
            "schema": TELEMETRY_SCHEMA,
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "seq": self.next_seq(),
            "sent_at": iso(sent_at),
            "readings": [{"ts": iso(ts), "metric": m, "value": v} for ts, m, v in readings],
        }
        return Message(
            topics.telemetry(self.device_id),
            encode(body),
            sent_at,
            expect,
            readings=tuple((on_wire(ts), m, v) for ts, m, v in readings),
        )

    def event(
        self, ts: datetime, type_: str, data: dict[str, Any] | None = None, *, sent_at: datetime | None = None
    ) -> Message:
        """A discrete event, sent at `sent_at` (default: when it happened)."""
        body = {
            "schema": EVENT_SCHEMA,
            "device_id": self.device_id,
            "boot_id": self.boot_id,
            "seq": self.next_seq(),
            "ts": iso(ts),
            "type": type_,
            "data": data or {},
        }
        return Message(topics.event(self.device_id), encode(body), sent_at or ts, event=(on_wire(ts), type_))

    def status(self, state: str, ts: datetime | None = None) -> bytes:
        """The retained presence payload; without `ts` for the Will, which cannot know when."""
        body: dict[str, Any] = {
            "schema": STATUS_SCHEMA,
            "device_id": self.device_id,
            "state": state,
            "boot_id": self.boot_id,
            "firmware": self.firmware,
        }
        if ts is not None:
            body["ts"] = iso(ts)
        return encode(body)

    def answer(self, raw: bytes) -> bytes:
        """The reply to a command request: `ok` with data, or `error` saying what was wrong."""
        try:
            request = CommandRequest.model_validate_json(raw)
            args = parse_args(request.name, request.args)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            detail = f"invalid command: {where}: {first['msg']}"
            reply = CommandReply(command_id=_command_id(raw), status="error", detail=detail)
            return reply.model_dump_json(by_alias=True).encode()
        return self._execute(request, args).model_dump_json(by_alias=True).encode()

    def _execute(self, request: CommandRequest, args: CommandArgs) -> CommandReply:
        kinds = COMMANDS[request.name].kinds
        if self.kind not in kinds:
            only = " and ".join(f"{k}s" for k in sorted(kinds))
            detail = f"{request.name} applies to {only} only"
            return CommandReply(command_id=request.command_id, status="error", detail=detail)
        data = COMMAND_HANDLERS[request.name](self, args)
        return CommandReply(command_id=request.command_id, status="ok", data=data)


def _ping(device: SimDevice, args: CommandArgs) -> dict[str, Any]:
    return {"boot_id": device.boot_id, "seq": device.seq, "firmware": device.firmware}


def _request_transmission(device: SimDevice, args: CommandArgs) -> dict[str, Any]:
    assert isinstance(args, RequestTransmissionArgs)
    return {"transmission": "scheduled", "lookback_h": args.lookback_h}


def _clear_dtc(device: SimDevice, args: CommandArgs) -> dict[str, Any]:
    device.cleared_dtcs += 1
    return {"cleared": True}


# What a simulated device does for each command of the catalogue (a test holds the keys equal).
COMMAND_HANDLERS: dict[str, Callable[[SimDevice, CommandArgs], dict[str, Any]]] = {
    "ping": _ping,
    "request_transmission": _request_transmission,
    "clear_dtc": _clear_dtc,
}


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON; NaN/Infinity are written as JS literals on purpose (ingest must catch them)."""
    return json.dumps(body, separators=(",", ":")).encode()


def _command_id(raw: bytes) -> str:
    try:
        value = json.loads(raw).get("command_id", "")
    except (ValueError, AttributeError):
        return ""
    return str(value)
