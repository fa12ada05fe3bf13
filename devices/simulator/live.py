"""A live fleet: devices that keep sending on a simulated clock until stopped (`pulsewire up`).

The simulated clock starts `lag_s` (default one day) behind the wall clock and runs at
`time_scale` event seconds per wall second, so the dashboard sees time pass quickly. Event time may
never run ahead of the wall clock (ingest quarantines future timestamps), so once the clock has
caught up it runs in real time. At the start every device uploads its last `history_s` of data
at once, so charts have something to show immediately.

report = await run_live(logins, settings.mqtt(), LiveOptions(time_scale=60), stop=event)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from devices.simulator.device import Message, SimDevice
from devices.simulator.live_sources import Incident, LiveImplant, LiveVehicle, incident_plan
from devices.simulator.runner import DeviceLogin, link_config
from devices.simulator.signals import DAY_S
from devices.simulator.transport import Counters, Incoming, MqttLink
from pulsewire.errors import BrokerError
from pulsewire.settings import MqttTarget
from schemas import topics
from schemas.payloads import CommandReply, CommandRequest

TICK_S = 0.2  # how often each device looks at its clock
CONNECT_CONCURRENCY = 50
STOP_GRACE_S = 2.0


class Source(Protocol):
    """A device's message generator (see live_sources)."""

    device: SimDevice

    def due(self, until: datetime) -> list[Message]: ...

    def command(self, name: str, at: datetime) -> list[Message]: ...


@dataclass(frozen=True)
class LiveOptions:
    """How the live fleet runs."""

    time_scale: float = 60.0
    duration_s: float | None = None  # None: until stopped
    seed: int = 1
    history_s: float = DAY_S
    lag_s: float = DAY_S
    max_inflight: int = 50


class SimClock:
    """Event time: `lag_s` behind now at the start, `scale` times faster, never ahead of the wall clock."""

    def __init__(self, scale: float, lag_s: float, now: datetime | None = None) -> None:
        self.scale = scale
        self.wall0 = now or datetime.now(UTC)
        self.origin = self.wall0 - timedelta(seconds=lag_s)
        self._mono0 = time.monotonic()

    @property
    def catch_up_s(self) -> float:
        """Event seconds from the start until this clock reaches the wall clock (it then keeps pace)."""
        lag_s = (self.wall0 - self.origin).total_seconds()
        return lag_s * self.scale / (self.scale - 1) if self.scale > 1 else lag_s

    def now(self) -> datetime:
        """The current event time."""
        elapsed = (time.monotonic() - self._mono0) * self.scale
        return min(self.origin + timedelta(seconds=elapsed), datetime.now(UTC))


@dataclass
class LiveReport:
    """What a live run did."""

    counters: Counters
    devices: int
    wall_s: float
    sim_start: datetime
    sim_end: datetime
    incidents: list[Incident] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The `--json` summary."""
        c = self.counters
        return {
            "mode": "live",
            "devices": self.devices,
            "published": c.published,
            "acknowledged": c.acknowledged,
            "errors": c.errors,
            "reconnects": c.reconnects,
            "commands": c.commands,
            "duration_s": round(self.wall_s, 3),
            "msg_per_s": round(c.published / self.wall_s, 1) if self.wall_s else 0.0,
            "sim_start": self.sim_start.isoformat(),
            "sim_end": self.sim_end.isoformat(),
            "incidents": [i.to_json() for i in self.incidents],
            "last_error": c.last_error,
        }


def make_source(
    login: DeviceLogin, seed: int, clock: SimClock, history_s: float, plan: list[Incident]
) -> Source:
    """The generator for one device, with its share of the incident plan."""
    device = SimDevice(login.device_id, login.kind, model=login.model)
    mine = [i for i in plan if i.device_id == login.device_id]
    start = clock.origin - timedelta(seconds=history_s)
    if login.kind == "implant":
        return LiveImplant(device, seed, clock.origin, start, mine)
    return LiveVehicle(device, seed, clock.origin, start, mine)


async def run_live(
    logins: list[DeviceLogin],
    target: MqttTarget,
    options: LiveOptions,
    *,
    stop: asyncio.Event,
    counters: Counters | None = None,
) -> LiveReport:
    """Run the fleet until `stop` is set (or `duration_s` passes); every device says `offline` at the end."""
    counters = counters or Counters()
    clock = SimClock(options.time_scale, options.lag_s)
    plan = incident_plan([(lg.device_id, lg.kind) for lg in logins], options.seed, clock.catch_up_s)
    sources = [make_source(lg, options.seed, clock, options.history_s, plan) for lg in logins]
    began = time.monotonic()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    links = await asyncio.gather(
        *(
            _connect(lg, s, target=target, clock=clock, counters=counters, options=options, gate=gate)
            for lg, s in zip(logins, sources, strict=True)
        )
    )
    tasks = [
        asyncio.create_task(_device_loop(s, link, clock, stop))
        for s, link in zip(sources, links, strict=True)
    ]
    try:
        if options.duration_s:
            try:
                await asyncio.wait_for(stop.wait(), options.duration_s)
            except TimeoutError:
                stop.set()
        else:
            await stop.wait()
    finally:
        stop.set()
        # A publish waiting for acknowledgements from a vanished broker would wait forever.
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        offline_at = clock.now()
        await asyncio.gather(
            *(
                link.close((topics.status(s.device.device_id), s.device.status("offline", offline_at)))
                for s, link in zip(sources, links, strict=True)
            )
        )
    return LiveReport(counters, len(logins), time.monotonic() - began, clock.origin, clock.now(), plan)


async def _connect(
    login: DeviceLogin,
    source: Source,
    *,
    target: MqttTarget,
    clock: SimClock,
    counters: Counters,
    options: LiveOptions,
    gate: asyncio.Semaphore,
) -> MqttLink:
    ref: list[MqttLink] = []
    config = link_config(target, login, source.device, max_inflight=options.max_inflight)
    link = MqttLink(config, counters, _command_handler(source, ref, clock))
    ref.append(link)
    async with gate:
        await link.connect()
    await link.publish(
        topics.status(login.device_id), source.device.status("online", clock.now()), retain=True
    )
    return link


def _command_handler(source: Source, ref: list[MqttLink], clock: SimClock) -> Callable[[Incoming], None]:
    """Reply as the scenario devices do; after an `ok`, let the source act (its messages go out next tick)."""
    reply_topic = topics.command_reply(source.device.device_id)

    def handle(msg: Incoming) -> None:
        payload = source.device.answer(msg.payload)
        ref[0].counters.commands += 1
        ref[0].reply(reply_topic, payload, msg.correlation_data)
        try:
            request = CommandRequest.model_validate_json(msg.payload)
            ok = CommandReply.model_validate_json(payload).status == "ok"
        except ValidationError:
            return
        if ok:
            source.command(request.name, clock.now())

    return handle


async def _device_loop(source: Source, link: MqttLink, clock: SimClock, stop: asyncio.Event) -> None:
    """Publish whatever the device's clock has made due, a few times a second, until stopped."""
    while not stop.is_set():
        for message in source.due(clock.now()):
            if stop.is_set():
                return
            try:
                await link.publish(message.topic, message.payload)
            except BrokerError as exc:  # counted; the link reconnects on its own
                link.counters.errors += 1
                link.counters.last_error = str(exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK_S)
