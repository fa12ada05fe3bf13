"""The live fleet (`pulsewire simulate --live`, run by `pulsewire up`): believable, continuous, stoppable."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.simulator import scenarios
from devices.simulator.device import Message, SimDevice
from devices.simulator.live import LiveOptions, run_live
from devices.simulator.live_sources import LiveImplant, LiveVehicle, incident_plan
from ingest.service import IngestService
from pulsewire.settings import Settings
from schemas import topics
from schemas.catalogue import EVENT_TYPES, metric_for
from tests.fix_simulator import Simulator
from tests.helpers import wait_for
from tests.ingest_support import running_ingest

FLEET = [
    ("sim-icd-1", "implant"),
    ("sim-veh-1", "vehicle"),
    ("sim-icd-2", "implant"),
    ("sim-veh-2", "vehicle"),
]
PULSEWIRE = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "pulsewire"


def two_days(device_id: str, kind: str, seed: int = 3) -> list[Message]:
    """A device's first two simulated days (one of history, one live), minute by minute."""
    origin = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    mine = [i for i in incident_plan(FLEET, seed) if i.device_id == device_id]
    cls = LiveImplant if kind == "implant" else LiveVehicle
    source = cls(SimDevice(device_id, kind), seed, origin, origin - timedelta(days=1), mine)
    out = source.due(origin)
    for minute in range(1, 24 * 60):
        out += source.due(origin + timedelta(minutes=minute))
    return out


def test_the_same_seed_gives_the_same_incident_plan() -> None:
    plan = incident_plan(FLEET, 5)
    assert plan == incident_plan(FLEET, 5)
    assert plan != incident_plan(FLEET, 6)
    assert {i.action for i in plan} == {"af_episode", "battery_eri", "overheating", "new_dtc"}
    rules = scenarios.default_rules()
    for incident in plan:
        kind = dict(FLEET)[incident.device_id]
        assert all(rule in rules[kind] for rule in incident.rules)
    # A handful over the first simulated hours, not a flood: one of each per ten devices.
    assert len(incident_plan([(f"d{i}", "vehicle") for i in range(40)], 5)) == 8


@pytest.mark.parametrize(("device_id", "kind"), FLEET)
def test_live_devices_stay_in_the_catalogue_and_in_time(device_id: str, kind: str) -> None:
    messages = two_days(device_id, kind)
    assert len(messages) > 20
    for m in messages:
        for ts, metric, value in m.readings:
            spec = metric_for(kind, metric)
            assert spec is not None and math.isfinite(value) and spec.admits(value), (metric, value)
            assert ts <= m.send_at + timedelta(seconds=1)  # never a reading from the future
        if m.event is not None:
            assert m.event[1] in EVENT_TYPES[kind]


def maxima(messages: list[Message], metric: str) -> float:
    return max(v for m in messages for _, name, v in m.readings if name == metric)


def test_incidents_cross_the_rules_and_the_rest_stay_clear() -> None:
    plan = incident_plan(FLEET, 3)
    by_action = {i.action: i.device_id for i in plan}
    for device_id, kind in FLEET:
        messages = two_days(device_id, kind)
        events = {m.event[1] for m in messages if m.event is not None}
        if kind == "implant":
            burden = maxima(messages, "af_burden_pct")
            assert (burden > 25) == (device_id == by_action["af_episode"]), burden
            assert burden < 20 or device_id == by_action["af_episode"]
            assert ("battery_status" in events) == (device_id == by_action["battery_eri"])
        else:
            coolant = maxima(messages, "coolant_temp_c")
            assert (coolant >= 110) == (device_id == by_action["overheating"]), coolant
            assert coolant >= 110 or coolant < 100
            assert ("dtc_set" in events) == (device_id == by_action["new_dtc"])
            assert {"ignition_on", "ignition_off", "heartbeat"} <= events


# -- against the broker and ingest ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest_worker(settings: Settings) -> Iterator[IngestService]:
    with running_ingest(settings, "live") as service:
        yield service


def retained_status(settings: Settings, device_id: str) -> dict[str, Any]:
    target = settings.mqtt()
    got: list[bytes] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(target.username, target.password)
    client.on_message = lambda c, u, msg: got.append(bytes(msg.payload))
    client.connect(target.host, target.port)
    client.subscribe(topics.status(device_id), qos=1)
    client.loop_start()
    try:
        wait_for(lambda: got, 5, "the retained status")
    finally:
        client.loop_stop()
        client.disconnect()
    body: dict[str, Any] = json.loads(got[-1])
    return body


def test_the_live_fleet_stores_both_kinds_and_stops_cleanly_on_sigterm(
    settings: Settings, ingest_worker: IngestService, conn: psycopg.Connection[Any]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSEWIRE_")}
    env.update(
        PULSEWIRE_DATABASE_URL=settings.require_database_url(),
        PULSEWIRE_MQTT_URL=str(settings.mqtt_url),
        PULSEWIRE_STATE_DIR=str(settings.state_dir),
    )
    args = ["simulate", "--live", "--devices", "3", "--time-scale", "3600", "--seed", "9", "--json"]
    # The history ends where the simulated clock starts, a day behind (`lag_s`); it then runs at 3600x.
    live_from = datetime.now(UTC) - timedelta(days=1)
    proc = subprocess.Popen([str(PULSEWIRE), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:

        def kinds_stored() -> set[str]:
            rows = conn.execute(
                "SELECT DISTINCT d.kind FROM readings r JOIN devices d USING (device_id) "
                "WHERE r.device_id LIKE 'sim-%%-0000%%'"
            )
            return {str(r["kind"]) for r in rows}

        wait_for(lambda: kinds_stored() == {"implant", "vehicle"} or proc.poll() is not None, 40, "readings")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""

        def newest() -> datetime | None:
            row = conn.execute(
                "SELECT max(ts) AS ts FROM readings WHERE device_id LIKE 'sim-%%-0000%%'"
            ).fetchone()
            return row["ts"] if row else None

        wait_for(lambda: (newest() or live_from) > live_from + timedelta(hours=2), 40, "two live hours")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["mode"] == "live" and summary["devices"] == 3 and summary["errors"] == 0
    assert summary["acknowledged"] == summary["published"] > 100
    assert {i["action"] for i in summary["incidents"]} == {
        "af_episode",
        "battery_eri",
        "overheating",
        "new_dtc",
    }
    for device_id in ("sim-icd-000001", "sim-veh-000001", "sim-icd-000002"):
        assert retained_status(settings, device_id)["state"] == "offline"
    bad = conn.execute("SELECT count(*) AS n FROM quarantine WHERE device_id LIKE 'sim-%%-0000%%'").fetchone()
    assert bad is not None and bad["n"] == 0


async def test_request_transmission_uploads_what_the_implant_stored(
    sim: Simulator, settings: Settings, ingest_worker: IngestService, conn: psycopg.Connection[Any]
) -> None:
    login = sim.device("implant")
    stop = asyncio.Event()
    options = LiveOptions(time_scale=1.0, lag_s=0, history_s=3 * 3600, seed=2)
    task = asyncio.create_task(run_live([login], settings.mqtt(), options, stop=stop))

    def count(sql: str) -> int:
        row = conn.execute(sql, (login.device_id,)).fetchone()
        return int(row["n"]) if row else 0

    readings = "SELECT count(*) AS n FROM readings WHERE device_id = %s"
    remote = "SELECT count(*) AS n FROM events WHERE device_id = %s AND data->>'kind' = 'remote'"
    try:
        await asyncio.to_thread(wait_for, lambda: count(readings) > 0, 15, "the history")
        # The device subscribes to its commands on CONNACK, before its retained `online`.
        assert (await asyncio.to_thread(retained_status, settings, login.device_id))["state"] == "online"
        before = count(readings)
        assert count(remote) == 0
        target = settings.mqtt()
        observer = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        observer.username_pw_set(target.username, target.password)
        observer.connect(target.host, target.port)
        observer.loop_start()
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = b"corr-1"
        props.ResponseTopic = topics.command_reply(login.device_id)
        body = (
            b'{"schema":"pulsewire.command/1","command_id":"c-7","name":"request_transmission","args":{},'
            b'"sent_at":"2026-01-01T00:00:00Z"}'
        )
        observer.publish(topics.command(login.device_id), body, qos=1, properties=props).wait_for_publish(5)
        observer.loop_stop()
        observer.disconnect()
        await asyncio.to_thread(wait_for, lambda: count(remote) == 1, 10, "the requested transmission")
        assert count(readings) > before
    finally:
        stop.set()
        report = await task
    assert report.counters.commands == 1 and report.counters.errors == 0


def test_clear_dtc_clears_the_code_and_says_so() -> None:
    plan = incident_plan(FLEET, 3)
    dtc = next(i for i in plan if i.action == "new_dtc")
    origin = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    source = LiveVehicle(SimDevice(dtc.device_id, "vehicle"), 3, origin, origin - timedelta(hours=2), [dtc])
    source.due(origin + timedelta(seconds=dtc.at_s + 5))
    assert source.dtcs == [dtc.args["code"]]
    at = origin + timedelta(seconds=dtc.at_s + 60)
    sent = source.command("clear_dtc", at)
    assert [m.event[1] for m in sent if m.event] == ["dtc_cleared", "mil_off"]
    assert json.loads(sent[0].payload)["data"] == {"codes": [dtc.args["code"]]}
    assert source.dtcs == [] and source.due(at)[:2] == sent
