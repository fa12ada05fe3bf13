"""End to end: simulated devices publish over MQTT, the real ingest commits, a relay worker evaluates
the default rules and delivers. Each scenario names the alerts it must produce; nothing else may fire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from devices.simulator.runner import DeviceLogin, run_scenario
from devices.simulator.scenarios import available, load
from pulsewire.settings import Settings
from relay.deliver import RetryPolicy
from relay.engine import EngineConfig
from relay.service import RelayConfig, RelayWorker
from relay.tick import check_silences
from tests.fix_db import World
from tests.ingest_support import running_ingest
from tests.relay_support import assert_vendor_safe, wait_for

Conn = psycopg.Connection[dict[str, Any]]
SPEEDUP = 4  # scenarios run 4x faster than their own time_scale; event time is unchanged


@pytest.fixture(scope="module")
def pipeline(settings: Settings, db_url: str, default_rules: None) -> Iterator[None]:
    # The clock tick is driven by the test (after the backlog is in), so it never runs mid-upload.
    config = RelayConfig(
        database_url=db_url, mqtt=settings.mqtt(), poll_s=0.1, tick_s=3600, retry=RetryPolicy(base_s=0.05)
    )
    with running_ingest(settings, "relay-ingest"):
        relay = RelayWorker(config)
        relay.start()
        try:
            yield
        finally:
            relay.stop()


def _count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row["n"])


@pytest.mark.parametrize("name", available())
def test_scenario_raises_exactly_its_alerts(
    name: str, pipeline: None, world: World, settings: Settings, conn: Conn
) -> None:
    scenario = load(name)
    device_id = f"{scenario.kind[:3]}-{name.replace('_', '-')}"
    creds = world.add_device(device_id, kind=scenario.kind)
    login = DeviceLogin(device_id, scenario.kind, creds.mqtt_password)
    run = asyncio.run(
        run_scenario(scenario, login, settings.mqtt(), seed=7, time_scale=scenario.time_scale * SPEEDUP)
    )
    readings = sum(run.expected_readings().values())
    events = sum(run.expected_events().values())
    wait_for(
        lambda: (
            _count(conn, "SELECT count(*) AS n FROM readings WHERE device_id = %s", device_id) >= readings
            and _count(conn, "SELECT count(*) AS n FROM events WHERE device_id = %s", device_id) >= events
        ),
        timeout_s=30,
        what="ingest to commit",
    )
    wait_for(
        lambda: _count(conn, "SELECT count(*) AS n FROM eval_queue WHERE device_id = %s", device_id) == 0,
        timeout_s=30,
        what="the relay to evaluate",
    )
    # Every scenario ends offline (its own goodbye, or the Will): the upload is over, silence is judged.
    offline = "SELECT count(*) AS n FROM devices WHERE device_id = %s AND NOT online"
    wait_for(
        lambda: _count(conn, offline, device_id),
        timeout_s=30,
        what="the device's offline status",
    )
    check_silences(conn, EngineConfig())
    alerts = list(conn.execute("SELECT * FROM alerts WHERE device_id = %s ORDER BY alert_id", (device_id,)))
    got = sorted((a["rule_key"], a["severity"]) for a in alerts)
    assert got == sorted((e.rule, e.severity) for e in scenario.expect), [
        {k: a[k] for k in ("rule_key", "late", "state", "started_at", "last_seen_at", "ended_at", "values")}
        for a in alerts
    ]
    if scenario.kind == "implant":
        # Nightly uploads of past days: recorded and delivered as late, never paged as current.
        assert all(a["late"] for a in alerts if a["rule_key"] != "implant.monitor_silent"), alerts
    for expected in scenario.expect:
        [alert] = [a for a in alerts if a["rule_key"] == expected.rule]
        audiences = {
            r["audience"]
            for r in conn.execute("SELECT audience FROM outbox WHERE alert_id = %s", (alert["alert_id"],))
        }
        assert audiences == set(expected.audience)
        for row in conn.execute(
            "SELECT body FROM outbox WHERE alert_id = %s AND audience = 'vendor'", (alert["alert_id"],)
        ):
            assert_vendor_safe(json.loads(row["body"]))
