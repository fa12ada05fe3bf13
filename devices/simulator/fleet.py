"""Thousands of devices from one process: one event loop, one MQTT connection per device.

Load mode sends live telemetry (timestamps = now) at `rate_hz` messages per device per second,
cycling through a block of seeded signal samples per device. One scheduler spreads the total rate
over the fleet round-robin; a device with `max_inflight` unacknowledged messages is skipped for
that turn (backpressure, nothing queues without bound), and the report says what rate was reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from devices.simulator.device import SimDevice, iso
from devices.simulator.runner import DeviceLogin, command_handler, link_config
from devices.simulator.signals import (
    ImplantState,
    VehicleState,
    heart_rate_hourly,
    implant_daily,
    rng_for,
    trip,
)
from devices.simulator.transport import Counters, MqttLink
from pulsewire.errors import BrokerError
from pulsewire.settings import MqttTarget
from schemas import topics
from schemas.payloads import TELEMETRY_SCHEMA

TICK_S = 0.005
CONNECT_CONCURRENCY = 64
MAX_PER_TURN = 2000


@dataclass
class LoadReport:
    """What a load run achieved."""

    devices: int
    connected: int
    published: int
    acknowledged: int
    errors: int
    reconnects: int
    commands: int
    readings: int
    duration_s: float
    target_msg_per_s: float
    msg_per_s: float
    readings_per_s: float
    last_error: str = ""

    def to_json(self) -> dict[str, object]:
        """The `--json` summary."""
        return asdict(self)


class _Member:
    """One device of the fleet: its link and a cycling block of signal samples."""

    def __init__(self, login: DeviceLogin, link: MqttLink, device: SimDevice, block: list[tuple[str, float]]):
        self.login, self.link, self.device, self.block = login, link, device, block
        self.cursor = 0
        self.topic = topics.telemetry(login.device_id)
        self.head = (
            f'{{"schema":"{TELEMETRY_SCHEMA}","device_id":"{login.device_id}",'
            f'"boot_id":"{device.boot_id}","seq":'
        )

    def payload(self, ts: str, n: int) -> bytes:
        """A telemetry message of `n` readings stamped `ts`; built by hand because it is the hot path."""
        parts = []
        for _ in range(n):
            metric, value = self.block[self.cursor]
            self.cursor = (self.cursor + 1) % len(self.block)
            parts.append(f'{{"ts":"{ts}","metric":"{metric}","value":{value!r}}}')
        seq = self.device.next_seq()
        return f'{self.head}{seq},"sent_at":"{ts}","readings":[{",".join(parts)}]}}'.encode()


def signal_block(kind: str, seed: int, device_id: str) -> list[tuple[str, float]]:
    """A few hundred seeded (metric, value) samples to cycle through in load mode."""
    rng = rng_for(seed, device_id, "load")
    start = datetime.now(UTC)
    if kind == "vehicle":
        samples = trip(rng, VehicleState.draw(rng), start, 600, sample_s=5)
        return [(m, v) for sample in samples for _, m, v in sample]
    state = ImplantState.draw(rng)
    rows = heart_rate_hourly(rng, start, state.rest_hr_bpm) + implant_daily(rng, state, start, 0.5)
    return [(m, v) for _, m, v in rows]


class Fleet:
    """A fleet of simulated devices sharing one event loop."""

    def __init__(
        self, logins: list[DeviceLogin], target: MqttTarget, *, seed: int = 1, max_inflight: int = 50
    ):
        self.logins, self.target, self.seed, self.max_inflight = logins, target, seed, max_inflight
        self.counters = Counters()
        self.members: list[_Member] = []

    async def connect(self) -> None:
        """Connect every device (bounded concurrency) and publish each one's retained `online`."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(login: DeviceLogin) -> _Member:
            async with gate:
                device = SimDevice(login.device_id, login.kind, model=login.model)
                ref: list[MqttLink] = []
                cfg = link_config(self.target, login, device, max_inflight=self.max_inflight)
                link = MqttLink(cfg, self.counters, command_handler(device, ref))
                ref.append(link)
                await link.connect()
                status = device.status("online", datetime.now(UTC))
                await link.publish(topics.status(login.device_id), status, retain=True)
                return _Member(login, link, device, signal_block(login.kind, self.seed, login.device_id))

        results = await asyncio.gather(*(one(login) for login in self.logins), return_exceptions=True)
        self.members = [r for r in results if isinstance(r, _Member)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures and not self.members:
            raise BrokerError(f"no device could connect: {failures[0]}")
        self.counters.errors += len(failures)
        if failures:
            self.counters.last_error = str(failures[0])

    async def run_load(
        self,
        rate_hz: float,
        duration_s: float,
        *,
        readings_per_message: int = 1,
        on_tick: Callable[[Counters], None] | None = None,
    ) -> LoadReport:
        """Publish live telemetry at `rate_hz` per device for `duration_s`; returns the achieved rates."""
        loop = asyncio.get_running_loop()
        target_rate = rate_hz * len(self.members)
        started = loop.time()
        published_before = self.counters.published
        sent = 0
        index = 0
        last_report = started
        while (now := loop.time()) - started < duration_s and self.members:
            # Capped per turn so acknowledgements get read and the duration is kept when behind.
            due = min(int(target_rate * (now - started)) - sent, MAX_PER_TURN)
            ts = iso(datetime.now(UTC))
            skipped = 0
            while due > 0 and skipped < len(self.members):
                member = self.members[index % len(self.members)]
                index += 1
                if member.link.try_publish(member.topic, member.payload(ts, readings_per_message)):
                    sent += 1
                    due -= 1
                    skipped = 0
                else:
                    skipped += 1
            if on_tick is not None and now - last_report >= 1.0:
                on_tick(self.counters)
                last_report = now
            await asyncio.sleep(TICK_S if due <= 0 else 0)
        elapsed = loop.time() - started
        await self.drain()
        return self._report(
            target_rate, elapsed, self.counters.published - published_before, readings_per_message
        )

    async def drain(self, timeout_s: float = 15.0) -> None:
        """Wait for every device's acknowledgements."""
        await asyncio.gather(*(m.link.drain(timeout_s) for m in self.members))

    async def close(self) -> None:
        """Publish `offline` for every device and disconnect cleanly."""

        async def one(member: _Member) -> None:
            offline = member.device.status("offline", datetime.now(UTC))
            await member.link.close((topics.status(member.login.device_id), offline))

        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def gated(member: _Member) -> None:
            async with gate:
                await one(member)

        await asyncio.gather(*(gated(m) for m in self.members))

    def _report(self, target_rate: float, elapsed: float, published: int, per_message: int) -> LoadReport:
        c = self.counters
        rate = published / elapsed if elapsed > 0 else 0.0
        return LoadReport(
            devices=len(self.logins),
            connected=c.connected,
            published=c.published,
            acknowledged=c.acknowledged,
            errors=c.errors,
            reconnects=c.reconnects,
            commands=c.commands,
            readings=published * per_message,
            duration_s=round(elapsed, 3),
            target_msg_per_s=round(target_rate, 1),
            msg_per_s=round(rate, 1),
            readings_per_s=round(rate * per_message, 1),
            last_error=c.last_error,
        )


def summary_line(counters: Counters, previous: int, interval_s: float) -> str:
    """One line of the live display."""
    rate = (counters.published - previous) / interval_s if interval_s > 0 else 0.0
    return (
        f"connected {counters.connected:>6}  msg/s {rate:>9.0f}  published {counters.published:>9}  "
        f"acked {counters.acknowledged:>9}  errors {counters.errors:>4}"
    )
