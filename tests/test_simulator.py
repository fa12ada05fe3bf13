"""The device simulator: signals, scenarios, command replies, load, and end to end through ingest."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.simulator import scenarios
from devices.simulator.device import SimDevice
from devices.simulator.runner import ScenarioRun
from ingest.service import IngestService
from pulsewire.errors import ScenarioError
from pulsewire.settings import Settings
from schemas import topics
from schemas.catalogue import EVENT_TYPES, metric_for
from schemas.payloads import CommandReply
from tests.fix_simulator import Simulator
from tests.helpers import wait_for
from tests.ingest_support import in_process_statuses, running_ingest, settle

ALL = scenarios.available()
REQUIRED = {
    "normal",
    "af_episode",
    "battery_eri",
    "lead_fracture",
    "shock",
    "monitor_offline",
    "normal_commute",
    "overheating",
    "new_dtc",
    "low_battery",
    "dongle_unplugged",
    "clock_skew",
    "duplicates",
    "out_of_order",
    "malformed",
    "flaky_link",
}


def plan(name: str, seed: int, device_id: str = "sim-test-1") -> list[Any]:
    scenario = scenarios.load(name)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    return scenarios.build_plan(
        scenario,
        SimDevice(device_id, scenario.kind),
        seed=seed,
        start=start,
        wall_now=datetime(2026, 3, 20, tzinfo=UTC),
    )


def test_every_required_scenario_is_bundled() -> None:
    assert set(ALL) >= REQUIRED


@pytest.mark.parametrize("name", ["normal", "overheating", "malformed"])
def test_same_seed_gives_the_same_readings(name: str) -> None:
    def readings(seed: int) -> list[Any]:
        return [r for m in plan(name, seed) for r in m.readings]

    assert readings(5) == readings(5)
    assert readings(5) != readings(6)


@pytest.mark.parametrize("name", [n for n in ALL if n != "malformed"])
def test_scenarios_stay_within_the_catalogue(name: str) -> None:
    kind = scenarios.load(name).kind
    messages = plan(name, seed=11)
    assert messages
    for m in messages:
        for _, metric, value in m.readings:
            spec = metric_for(kind, metric)
            assert spec is not None, metric
            assert math.isfinite(value) and spec.admits(value), (metric, value)
        if m.event is not None:
            assert m.event[1] in EVENT_TYPES[kind]


def test_every_scenario_names_its_alerts_by_rule_and_audience() -> None:
    for name in ALL:
        scenario = scenarios.load(name)
        for alert in scenario.expect:
            rule = scenarios.default_rules()[scenario.kind][alert.rule]
            technical = rule["class"] == "technical"
            assert alert.audience == (("provider", "vendor") if technical else ("provider",))
    assert [a.rule for a in scenarios.load("overheating").expect] == ["vehicle.overheating"]
    assert scenarios.load("normal").expect == ()


def test_a_scenario_with_an_unknown_rule_is_refused() -> None:
    raw = {
        "name": "x",
        "kind": "vehicle",
        "expect": [{"rule": "vehicle.nope", "severity": "red", "audience": ["provider"]}],
    }
    with pytest.raises(ScenarioError, match="no vehicle rule"):
        scenarios.parse(raw)
    with pytest.raises(ScenarioError, match="audience"):
        scenarios.parse(
            {
                **raw,
                "expect": [
                    {"rule": "vehicle.dongle_unplugged", "severity": "yellow", "audience": ["provider"]}
                ],
            }
        )
    with pytest.raises(ScenarioError, match="duration"):
        scenarios.parse_duration("three days")


def test_a_reboot_starts_a_new_boot_and_seq() -> None:
    messages = plan("dongle_unplugged", seed=2)
    boots = [m for m in messages if m.event and m.event[1] == "dongle_plugged"]
    assert len(boots) == 1
    after = messages[messages.index(boots[0])]
    assert b'"seq":0' in after.payload


def test_malformed_covers_every_quarantine_reason() -> None:
    from schemas.payloads import QuarantineReason

    reasons = {
        r
        for m in plan("malformed", 3)
        if m.expect not in ("store", "duplicate")
        for r in (m.expect if isinstance(m.expect, tuple) else (m.expect,))
    }
    # A budget (rate_limited) and a database refusal (db_rejected) are not earned by one message.
    assert reasons == {r.value for r in QuarantineReason} - {"rate_limited", "db_rejected"}


# -- against the broker -------------------------------------------------------------------------


async def test_a_command_gets_its_reply_with_the_same_correlation_data(
    sim: Simulator, settings: Settings
) -> None:
    login = sim.device("vehicle")
    target = settings.mqtt()
    replies: asyncio.Queue[tuple[bytes, bytes | None]] = asyncio.Queue()
    online = asyncio.Event()
    loop = asyncio.get_running_loop()
    observer = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    observer.username_pw_set(target.username, target.password)

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topics.status(login.device_id):
            loop.call_soon_threadsafe(online.set)
            return
        corr = getattr(msg.properties, "CorrelationData", None)
        loop.call_soon_threadsafe(replies.put_nowait, (bytes(msg.payload), corr))

    observer.on_message = on_message
    observer.connect(target.host, target.port)
    observer.subscribe(topics.command_reply(login.device_id), qos=1)
    observer.subscribe(topics.status(login.device_id), qos=1)
    observer.loop_start()
    try:
        task = asyncio.create_task(sim.scenario("normal_commute", login=login, time_scale=20_000))
        # The device subscribes to its commands on CONNACK, before it says `online`: once the
        # broker passes that on, a command reaches it.
        await asyncio.wait_for(online.wait(), 10)
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = corr
        props.ResponseTopic = topics.command_reply(login.device_id)
        body = (
            b'{"schema":"pulsewire.command/1","command_id":"c-1","name":"clear_dtc","args":{},'
            b'"sent_at":"2026-01-01T00:00:00Z"}'
        )
        observer.publish(topics.command(login.device_id), body, qos=1, properties=props).wait_for_publish(5)
        payload, got_corr = await asyncio.wait_for(replies.get(), 10)
        run = await task
    finally:
        observer.loop_stop()
        observer.disconnect()
    assert got_corr == corr
    reply = CommandReply.model_validate_json(payload)
    assert (reply.command_id, reply.status, reply.data) == ("c-1", "ok", {"cleared": True})
    assert run.counters.commands == 1 and run.counters.errors == 0


async def test_a_fleet_publishes_and_every_message_is_acknowledged(sim: Simulator) -> None:
    fleet = sim.fleet(50, "vehicle")
    await fleet.connect()
    try:
        report = await fleet.run_load(rate_hz=20, duration_s=1.5, readings_per_message=10)
    finally:
        await fleet.close()
    assert report.connected == 50 and report.errors == 0, report.last_error
    assert report.published >= 0.8 * 50 * 20 * 1.5
    assert report.acknowledged == report.published  # each device's retained `online` included
    assert report.msg_per_s > 0.8 * report.target_msg_per_s


# -- end to end through ingest -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest_worker(settings: Settings) -> Iterator[IngestService]:
    with running_ingest(settings, "sim") as service:
        yield service


def stored(conn: psycopg.Connection[Any], run: ScenarioRun) -> tuple[Counter[Any], Counter[Any], list[str]]:
    readings = Counter(
        (r["ts"], r["metric"], r["value"])
        for r in conn.execute("SELECT ts, metric, value FROM readings WHERE device_id = %s", (run.device_id,))
    )
    events = Counter(
        (r["ts"], r["type"])
        for r in conn.execute("SELECT ts, type FROM events WHERE device_id = %s", (run.device_id,))
    )
    quarantined = [
        r["reason"]
        for r in conn.execute(
            "SELECT reason FROM quarantine WHERE topic LIKE %s OR device_id LIKE %s",
            (f"{topics.DEVICE_PREFIX}%{run.device_id}%", f"{run.device_id}%"),
        )
    ]
    return readings, events, quarantined


def wait_for_rows(
    conn: psycopg.Connection[Any], run: ScenarioRun, settings: Settings, worker: IngestService
) -> Any:
    """What ingest stored of `run`, once it stored at least what the run expects and settled."""
    want = (
        sum(run.expected_readings().values()),
        sum(run.expected_events().values()),
        len(run.expected_quarantine()),
    )

    def enough() -> bool:
        got = stored(conn, run)
        counts = [sum(x.values()) if isinstance(x, Counter) else len(x) for x in got]
        return all(n >= w for n, w in zip(counts, want, strict=True))

    wait_for(enough, 20, f"(readings, events, quarantined) = {want}")
    settle(settings, run.device_id, [in_process_statuses(worker)])  # a copy stored twice is in by now
    return stored(conn, run)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
async def test_each_scenario_stores_exactly_what_it_published(
    name: str, sim: Simulator, ingest_worker: IngestService, conn: psycopg.Connection[Any]
) -> None:
    run = await sim.scenario(name, seed=4)
    assert run.counters.errors == 0, run.counters.last_error
    readings, events, quarantined = await asyncio.to_thread(
        wait_for_rows, conn, run, sim.settings, ingest_worker
    )
    assert readings == run.expected_readings()
    assert events == run.expected_events()
    want = run.expected_quarantine()
    assert len(quarantined) == len(want), sorted({str(w) for w in want} - {str(q) for q in quarantined})
    remaining = Counter(quarantined)
    for reason in want:
        options = reason if isinstance(reason, tuple) else (reason,)
        hit = next((r for r in options if remaining[r] > 0), None)
        assert hit is not None, (reason, quarantined)
        remaining[hit] -= 1
