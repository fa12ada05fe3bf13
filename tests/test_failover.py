"""PostgreSQL failover under load, with real processes: nothing acknowledged is lost or stored twice.

A pg_auto_failover formation (`Stack.up(ha=True)`) serves ingest, relay and dashboard processes,
all on its multi-host URL. Under continuous QoS 1 telemetry and with a red alert in flight, the
primary node dies (its keeper and postmaster SIGKILLed); the monitor promotes the standby and every
service finds it by itself. The time from the kill to the first commit on the new primary is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pulsewire import registry
from pulsewire.db import connect
from pulsewire.migrate import migrate
from pulsewire.settings import Settings
from pulsewire.stack import Stack
from pulsewire.stack._ports import free_port
from relay import store
from relay.rules import seed_defaults
from tests.fix_stack import new_state_dir
from tests.helpers import wait_for
from tests.ingest_support import ROOT, Publisher, event, settle, start_ingest_process, telemetry
from tests.relay_support import Receiver, webhook_receiver

pytestmark = pytest.mark.slow
DEVICE = "icd-failover"  # also the device of the red alert
# Each device stays well inside ingest's per-device budget (50 msg/s): 10 devices at 20 msg/s each.
LOAD_DEVICES = [f"{DEVICE}-{i}" for i in range(10)]


@pytest.fixture(scope="module")
def ha_stack() -> Iterator[Stack]:
    stack = Stack(new_state_dir())
    try:
        stack.up(ha=True)
        yield stack
    finally:
        stack.down()
        shutil.rmtree(stack.state_dir, ignore_errors=True)


def _service(args: list[str], stack: Stack, log: Path) -> subprocess.Popen[bytes]:
    info = stack.status()
    assert info is not None
    env = dict(os.environ, PULSEWIRE_DATABASE_URL=info.database_url, PULSEWIRE_MQTT_URL=info.mqtt_url,
               PULSEWIRE_STATE_DIR=str(stack.state_dir), PULSEWIRE_WEBHOOK_ALLOW_PRIVATE="1")  # fmt: skip
    exe = Path(sys.executable).parent / "pulsewire"
    return subprocess.Popen(
        [str(exe), *args], env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def _committed(port: int) -> float:
    """Messages the ingest process has committed, from its /metrics (0 before it serves them)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (ConnectionError, urllib.error.URLError):
        return 0.0
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "pulsewire_ingest_messages_total"
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return bool(json.loads(response.read())["status"] == "ready")
    except (ConnectionError, urllib.error.URLError):
        return False


class _Load:
    """Continuous QoS 1 telemetry in a thread; `acked`: the (device, seq) the broker acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.acked: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._pub = Publisher(settings.mqtt())
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        self._pub.close()

    def _run(self) -> None:
        seq = 0
        while not self._stop.wait(0.1):
            seq += 2
            batch = [
                telemetry(d, s, [("heart_rate_bpm", 70.0)]) for d in LOAD_DEVICES for s in (seq - 1, seq)
            ]
            self._pub.publish_all(batch)
            self.acked.extend((d, s) for d in LOAD_DEVICES for s in (seq - 1, seq))


def _prepare(url: str, stack: Stack) -> tuple[int, int]:
    migrate(url, "native")
    with connect(url, autocommit=True) as c:
        seed_defaults(c)
        clinic = registry.add_org(c, "Failover Clinic", "provider")
        vendor = registry.add_org(c, "Failover Vendor", "vendor")
        for device in (DEVICE, *LOAD_DEVICES):
            registry.add_device(c, device, kind="implant", provider_org_id=clinic, vendor_org_id=vendor,
                                model="Evera XT DR")  # fmt: skip
        assert registry.sync_broker_auth(c, stack.state_dir)
    return clinic, vendor


def test_primary_killed_under_load_loses_nothing(ha_stack: Stack, tmp_path: Path) -> None:
    info = ha_stack.status()
    cluster = ha_stack.cluster()
    assert info is not None and cluster is not None
    url = info.database_url
    assert "target_session_attrs=read-write" in url and url.count("127.0.0.1:") == 2
    clinic, _vendor = _prepare(url, ha_stack)
    settings = Settings(database_url=url, mqtt_url=info.mqtt_url, state_dir=ha_stack.state_dir)
    metrics, api = free_port(), free_port()
    log = tmp_path / "ingest.log"
    ingest = start_ingest_process(url, info.mqtt_url, ha_stack.state_dir, client_id="fo-ingest",
                                  share_group="fo", log_path=log, metrics_port=metrics)  # fmt: skip
    relay = _service(["relay"], ha_stack, tmp_path / "relay.log")
    dashboard = _service(["dashboard", "--port", str(api)], ha_stack, tmp_path / "dashboard.log")
    try:
        wait_for(lambda: _ready(api), what="the dashboard to be ready")
        with webhook_receiver() as rx:
            with connect(url, autocommit=True) as c:
                hook = store.create_webhook(c, clinic, rx.url)
            _run_failover(ha_stack, settings, metrics, rx, api)
            with connect(url, autocommit=True) as c:
                store.delete_webhook(c, clinic, hook["webhook_id"])
        assert ingest.poll() is None and relay.poll() is None and dashboard.poll() is None
    finally:
        for proc in (ingest, relay, dashboard):
            proc.terminate()
            proc.wait(30)


def _run_failover(stack: Stack, settings: Settings, metrics: int, rx: Receiver, api: int) -> None:
    cluster = stack.cluster()
    assert cluster is not None
    url = settings.require_database_url()
    with _Load(settings) as load:
        wait_for(lambda: _committed(metrics) > 100, what="ingest to commit under load")
        primary = cluster.primary()
        assert primary is not None
        with Publisher(settings.mqtt()) as pub:  # the red alert, in flight when the primary dies
            pub.publish_all(
                [event(DEVICE, 1, "shock_delivered", {"energy_j": 35, "success": True}, boot_id="ev")]
            )
        killed = time.monotonic()
        cluster.crash(primary.name)  # returns once the postmaster is gone: later commits are elsewhere
        before = _committed(metrics)
        wait_for(lambda: _committed(metrics) > before, timeout_s=120, what="a commit on the new primary")
        failover_s = time.monotonic() - killed
        print(f"\nfailover: kill -> first commit on the new primary in {failover_s:.1f} s")
        new = cluster.primary()
        assert new is not None and new.name != primary.name
        wait_for(lambda: _committed(metrics) > before + 400, timeout_s=60, what="ingest to go on")
    settle(settings, DEVICE, [lambda: _committed(metrics)])
    acked = set(load.acked)
    with connect(url, autocommit=True) as c:
        rows = c.execute(
            "SELECT device_id, seq FROM ingest_log WHERE device_id = ANY(%s) AND boot_id = 'b1'",
            (LOAD_DEVICES,),
        ).fetchall()
        readings = c.execute(
            "SELECT count(*) AS n FROM readings WHERE device_id = ANY(%s)", (LOAD_DEVICES,)
        ).fetchone()
    stored = {(str(r["device_id"]), int(r["seq"])) for r in rows}
    assert acked <= stored, f"{len(acked - stored)} acknowledged message(s) lost"
    assert readings is not None and readings["n"] == len(stored), "a reading stored twice or lost"
    _assert_alert_once(url, rx)
    wait_for(lambda: _ready(api), what="the dashboard to answer from the new primary")


def _assert_alert_once(url: str, rx: Receiver) -> None:
    def delivered() -> list[object]:
        with connect(url, autocommit=True) as c:
            return c.execute(
                "SELECT o.delivery_id FROM outbox o JOIN alerts a USING (alert_id) WHERE a.device_id = %s"
                " AND a.rule_key = 'implant.shock_delivered' AND o.webhook_id IS NOT NULL"
                " AND o.state = 'delivered'",
                (DEVICE,),
            ).fetchall()

    rows = wait_for(delivered, timeout_s=90, what="the red alert's delivery")
    bodies = [b for b in rx.bodies() if b.get("alert", {}).get("rule_key") == "implant.shock_delivered"]
    assert len(rows) == 1
    assert len({b["alert"]["alert_id"] for b in bodies}) == 1
