"""Run a scenario for one device against a broker, in compressed event time.

run = await run_scenario(load("overheating"), login, broker, seed=7)
run.expected_readings()    # what a correct ingest stores
run.expected_quarantine()  # the reasons it must quarantine
run.scenario.expect        # the alerts the relay must raise
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devices.simulator.device import DUPLICATE, STORE, Message, SimDevice
from devices.simulator.scenarios import Scenario, build_plan
from devices.simulator.signals import Sample
from devices.simulator.transport import Counters, Incoming, LinkConfig, MqttLink, link_options
from pulsewire.settings import MqttTarget
from schemas import topics


@dataclass(frozen=True)
class DeviceLogin:
    """A registered device, its MQTT password and, when it has one, its certificate and key files."""

    device_id: str
    kind: str
    password: str
    model: str = ""
    certificate: tuple[Path, Path] | None = None


@dataclass
class ScenarioRun:
    """What one device published in a scenario, and what the server should make of it."""

    scenario: Scenario
    device_id: str
    boot_ids: set[str]
    messages: list[Message]
    counters: Counters
    wall_s: float = 0.0
    replies: list[bytes] = field(default_factory=list)

    def expected_readings(self) -> Counter[Sample]:
        """Every reading a correct ingest stores, as a multiset of (ts, metric, value)."""
        return Counter(r for m in self.messages if m.expect == STORE for r in m.readings)

    def expected_events(self) -> Counter[tuple[datetime, str]]:
        """Every event a correct ingest stores, as (ts, type)."""
        return Counter(m.event for m in self.messages if m.expect == STORE and m.event is not None)

    def expected_quarantine(self) -> list[str | tuple[str, ...]]:
        """The quarantine reason of each bad message (a tuple where either reason is right)."""
        return [m.expect for m in self.messages if not m.action and m.expect not in (STORE, DUPLICATE)]

    def published(self) -> int:
        """Messages put on the wire (duplicates included, link actions not)."""
        return sum(1 for m in self.messages if not m.action)


def link_config(
    target: MqttTarget, login: DeviceLogin, device: SimDevice, *, max_inflight: int = 100
) -> LinkConfig:
    """A device's MQTT login: its own credentials, a retained `offline` Will, its command topic."""
    return LinkConfig(
        link_options(target, login.device_id, login.password, login.device_id, login.certificate),
        will_topic=topics.status(login.device_id),
        will_payload=device.status("offline"),
        subscribe=[topics.command(login.device_id)],
        max_inflight=max_inflight,
    )


def command_handler(
    device: SimDevice, link_ref: list[MqttLink], sink: list[bytes] | None = None
) -> Callable[[Incoming], None]:
    """Answer commands on the reply topic with the request's correlation data."""
    reply_topic = topics.command_reply(device.device_id)

    def handle(msg: Incoming) -> None:
        payload = device.answer(msg.payload)
        if sink is not None:
            sink.append(payload)
        link_ref[0].counters.commands += 1
        # The ACL allows only our own reply topic; any other response topic would be dropped.
        link_ref[0].reply(reply_topic, payload, msg.correlation_data)

    return handle


async def run_scenario(
    scenario: Scenario,
    login: DeviceLogin,
    target: MqttTarget,
    *,
    seed: int,
    time_scale: float | None = None,
    start: datetime | None = None,
    counters: Counters | None = None,
) -> ScenarioRun:
    """Publish `scenario` as `login`'s device; returns once every message is acknowledged."""
    device = SimDevice(login.device_id, scenario.kind, model=login.model or scenario.model)
    wall_now = datetime.now(UTC)
    start = start or scenario.default_start(wall_now)
    first_boot = device.boot_id
    messages = build_plan(scenario, device, seed=seed, start=start, wall_now=wall_now)
    device.reboot(first_boot)  # the plan advanced seq; live status/commands speak for the first boot
    counters = counters or Counters()
    run = ScenarioRun(scenario, login.device_id, {first_boot}, messages, counters)
    ref: list[MqttLink] = []
    link = MqttLink(link_config(target, login, device), counters, command_handler(device, ref, run.replies))
    ref.append(link)
    service: MqttLink | None = None
    await link.connect()
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        await link.publish(topics.status(device.device_id), device.status("online", start), retain=True)
        if any(m.as_service for m in messages):
            service = await _service_link(target, counters)
        scale = time_scale or scenario.time_scale
        origin = messages[0].send_at if messages else start
        for m in messages:
            await _wait_until(loop, began + (m.send_at - origin).total_seconds() / scale)
            await _send(m, link, service, run)
        await link.drain()
        if service is not None:
            await service.drain()
    finally:
        if any(s.action == "silent" for s in scenario.timeline):
            link.abort()  # the monitor lost power: no `offline` of its own, the Will says it
        else:
            await link.close((topics.status(device.device_id), device.status("offline", datetime.now(UTC))))
        if service is not None:
            await service.close()
    run.wall_s = loop.time() - began
    return run


async def _send(m: Message, link: MqttLink, service: MqttLink | None, run: ScenarioRun) -> None:
    if m.action == "drop":
        link.drop()
        return
    via = service if m.as_service and service is not None else link
    await via.publish(m.topic, m.payload)
    boot = _boot_of(m)
    if boot:
        run.boot_ids.add(boot)


def _boot_of(m: Message) -> str:
    marker = b'"boot_id":"'
    at = m.payload.find(marker)
    if at < 0:
        return ""
    end = m.payload.find(b'"', at + len(marker))
    return m.payload[at + len(marker) : end].decode(errors="replace")


async def _wait_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0.001 and math.isfinite(delay):
        await asyncio.sleep(delay)


async def _service_link(target: MqttTarget, counters: Counters) -> MqttLink:
    """The service login, for the bad messages a device's ACL would not let through."""
    cfg = LinkConfig(
        link_options(target, target.username or "", target.password or "", f"pw-sim-service-{id(counters):x}")
    )
    link = MqttLink(cfg, counters)
    await link.connect()
    return link
