"""Faults laid over a scenario's messages: clock skew, duplicates, reordering, malformed
payloads (one per quarantine reason) and a flaky link. Each sets the `expect` of what it touches."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from devices.simulator.device import DUPLICATE, STORE, Message, SimDevice, encode, iso, on_wire
from schemas import topics
from schemas.payloads import EVENT_SCHEMA, MAX_PAYLOAD_BYTES, MAX_READINGS, TELEMETRY_SCHEMA, QuarantineReason

Fault = Callable[[list[Message], SimDevice, np.random.Generator, dict[str, Any], datetime], list[Message]]
R = QuarantineReason


def _data_messages(messages: list[Message]) -> list[int]:
    return [i for i, m in enumerate(messages) if not m.action and m.stored]


def duplicates(
    messages: list[Message],
    device: SimDevice,
    rng: np.random.Generator,
    params: dict[str, Any],
    wall_now: datetime,
) -> list[Message]:
    """Send a share of messages twice (a redelivery): stored once."""
    share = float(params.get("share", 0.2))
    out: list[Message] = []
    for m in messages:
        out.append(m)
        if not m.action and m.stored and rng.random() < share:
            later = m.send_at + timedelta(seconds=float(rng.uniform(0, 60)))
            out.append(replace(m, send_at=later, expect=DUPLICATE))
    return sorted(out, key=lambda x: x.send_at)


def out_of_order(
    messages: list[Message],
    device: SimDevice,
    rng: np.random.Generator,
    params: dict[str, Any],
    wall_now: datetime,
) -> list[Message]:
    """Shuffle messages within windows of `window` (send times stay increasing): all stored."""
    window = int(params.get("window", 8))
    out: list[Message] = []
    for lo in range(0, len(messages), window):
        chunk = messages[lo : lo + window]
        times = [m.send_at for m in chunk]
        order = rng.permutation(len(chunk))
        out += [chunk[int(j)].retimed(t) for j, t in zip(order, times, strict=True)]
    return out


def clock_skew(
    messages: list[Message],
    device: SimDevice,
    rng: np.random.Generator,
    params: dict[str, Any],
    wall_now: datetime,
) -> list[Message]:
    """A device clock that runs ahead: a share of telemetry stamped `ahead_s` past the real now.

    More than 5 minutes ahead is quarantined (`future_timestamp`); `tolerated_ahead_s` is stored.
    """
    ahead_s, tolerated_s = float(params.get("ahead_s", 900)), float(params.get("tolerated_ahead_s", 60))
    share = float(params.get("share", 0.1))
    out: list[Message] = []
    for m in messages:
        if m.action or not m.readings or rng.random() >= share:
            out.append(m)
            continue
        far = rng.random() < 0.6
        shift = wall_now + timedelta(seconds=ahead_s if far else tolerated_s) - m.readings[-1][0]
        readings = [(ts + shift, metric, v) for ts, metric, v in m.readings]
        body = json.loads(m.payload)
        body["readings"] = [{"ts": iso(ts), "metric": k, "value": v} for ts, k, v in readings]
        body["sent_at"] = iso(readings[-1][0])
        out.append(
            Message(
                m.topic,
                encode(body),
                m.send_at,
                R.FUTURE_TIMESTAMP.value if far else STORE,
                readings=tuple((on_wire(ts), k, v) for ts, k, v in readings),
            )
        )
    return out


def flaky_link(
    messages: list[Message],
    device: SimDevice,
    rng: np.random.Generator,
    params: dict[str, Any],
    wall_now: datetime,
) -> list[Message]:
    """Drop the TCP connection `drops` times; paho resends what was not acknowledged."""
    drops = int(params.get("drops", 5))
    data = _data_messages(messages)
    at = sorted(rng.choice(len(data), size=min(drops, len(data)), replace=False))
    out = list(messages)
    for k in reversed(at):
        i = data[int(k)]
        out.insert(i + 1, Message("", b"", messages[i].send_at, action="drop"))
    return out


def malformed(
    messages: list[Message],
    device: SimDevice,
    rng: np.random.Generator,
    params: dict[str, Any],
    wall_now: datetime,
) -> list[Message]:
    """One message for every quarantine reason a single message can earn, spread over the timeline."""
    data = _data_messages(messages)
    bad = _bad_messages(device, wall_now, str(params.get("ghost_id", device.device_id + "-ghost")))
    spots = sorted(rng.choice(data, size=len(bad), replace=len(data) < len(bad)))
    out = list(messages)
    for offset, (i, msg) in enumerate(zip(spots, bad, strict=True)):
        out.insert(int(i) + 1 + offset, msg.retimed(messages[int(i)].send_at))
    return out


def _bad_messages(device: SimDevice, now: datetime, ghost_id: str) -> list[Message]:
    good_ts = iso(now - timedelta(minutes=10))

    def tel(readings: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
        return {
            "schema": TELEMETRY_SCHEMA,
            "device_id": device.device_id,
            "boot_id": device.boot_id,
            "seq": device.next_seq(),
            "sent_at": good_ts,
            "readings": readings,
            **over,
        }

    def one(metric: str, value: float, ts: str = good_ts) -> list[dict[str, Any]]:
        return [{"ts": ts, "metric": metric, "value": value}]

    own = topics.telemetry(device.device_id)
    many = [{"ts": good_ts, "metric": "rpm", "value": 800.0}] * (MAX_READINGS + 1)
    padded = encode(tel(one("rpm", 800.0))) + b" " * (MAX_PAYLOAD_BYTES + 1024)
    event = {
        "schema": EVENT_SCHEMA,
        "device_id": device.device_id,
        "boot_id": device.boot_id,
        "seq": device.next_seq(),
        "ts": good_ts,
        "type": "teleported",
        "data": {},
    }
    cases: list[tuple[str | tuple[str, ...], str, bytes, bool]] = [
        (R.MALFORMED_JSON, own, b'{"schema": "pulsewire.telemetry/1", "device_id": ', False),
        (R.WRONG_SCHEMA, own, encode(tel(one("rpm", 800.0), schema="pulsewire.telemetry/9")), False),
        (R.INVALID_PAYLOAD, own, encode(tel([])), False),
        (R.OVERSIZED, own, padded, False),
        ((R.TOO_MANY_READINGS, R.OVERSIZED), own, encode(tel(many)), False),
        (R.DEVICE_MISMATCH, own, encode(tel(one("rpm", 800.0), device_id=ghost_id)), False),
        (
            R.UNREGISTERED_DEVICE,
            topics.telemetry(ghost_id),
            encode(tel(one("rpm", 800.0), device_id=ghost_id)),
            True,
        ),
        (R.UNKNOWN_METRIC, own, encode(tel(one("warp_factor", 9.0))), False),
        (R.OUT_OF_RANGE, own, encode(tel(one("coolant_temp_c", 480.0))), False),
        (R.NON_FINITE, own, encode(tel(one("coolant_temp_c", float("nan")))), False),
        (R.FUTURE_TIMESTAMP, own, encode(tel(one("rpm", 800.0, iso(now + timedelta(hours=2))))), False),
        (R.TOO_OLD, own, encode(tel(one("rpm", 800.0, iso(now - timedelta(days=20 * 365))))), False),
        (R.NUL_IN_STRING, own, encode(tel(one("rpm", 800.0), boot_id="b\x00")), False),
        (R.UNKNOWN_EVENT_TYPE, topics.event(device.device_id), encode(event), False),
        # Not a device topic (no valid device id in it), though under the prefix ingest reads.
        (R.UNKNOWN_TOPIC, topics.telemetry("~" + device.device_id), encode(tel(one("rpm", 800.0))), True),
    ]
    return [Message(t, body, now, _reason(reason), as_service=svc) for reason, t, body, svc in cases]


def _reason(reason: str | tuple[str, ...]) -> str | tuple[str, ...]:
    if isinstance(reason, tuple):
        return tuple(str(r) for r in reason)
    return str(reason)


FAULTS: dict[str, Fault] = {
    "duplicates": duplicates,
    "out_of_order": out_of_order,
    "clock_skew": clock_skew,
    "flaky_link": flaky_link,
    "malformed": malformed,
}
