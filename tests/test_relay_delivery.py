"""Deliveries against real receivers: a threaded HTTP server, Mosquitto, aiosmtpd, SSE over LISTEN;
retries and the ledger, two workers, a worker killed mid-delivery."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from pulsewire.db import connect
from pulsewire.settings import Settings
from relay import sse, store
from relay.channels import Channels
from relay.deliver import RetryPolicy, deliver_one
from relay.egress import EgressPolicy
from relay.service import RelayConfig, RelayWorker
from relay.signing import verify
from schemas import topics
from tests.fix_db import World
from tests.helpers import round_trips
from tests.relay_support import (
    assert_vendor_safe,
    commit_batch,
    evaluate,
    smtp_inbox,
    wait_for,
    webhook_receiver,
)

Conn = psycopg.Connection[dict[str, Any]]


def _config(settings: Settings, **kw: Any) -> RelayConfig:
    kw.setdefault("retry", RetryPolicy(max_attempts=4, base_s=0.05, cap_s=0.2))
    kw.setdefault("delivery_threads", 2)
    return RelayConfig(
        database_url=settings.require_database_url(), mqtt=settings.mqtt(), poll_s=0.1, tick_s=3600, **kw
    )


pytestmark = pytest.mark.usefixtures("default_rules")


@pytest.fixture
def worker(settings: Settings) -> Iterator[RelayWorker]:
    w = RelayWorker(_config(settings))
    w.start()
    yield w
    w.stop()


def _webhook_rows(conn: Conn, webhook_id: int) -> list[dict[str, Any]]:
    return list(
        conn.execute("SELECT * FROM outbox WHERE webhook_id = %s ORDER BY delivery_id", (webhook_id,))
    )


def _attempts(conn: Conn, delivery_id: int) -> list[dict[str, Any]]:
    return list(
        conn.execute(
            "SELECT * FROM delivery_attempts WHERE delivery_id = %s ORDER BY attempt_id", (delivery_id,)
        )
    )


def test_failing_receiver_gets_one_accepted_delivery_and_ledger_has_three(
    conn: Conn, world: World, worker: RelayWorker
) -> None:
    world.add_device("icd-hook")
    with webhook_receiver(script=[500, 503]) as rx:
        hook = store.create_webhook(conn, world.clinic_id, rx.url)
        commit_batch(conn, "icd-hook", events=[(datetime.now(UTC), "device_reset", {"reason": "por"})])
        wait_for(rx.accepted, what="an accepted delivery")
        [row] = wait_for(
            lambda: [r for r in _webhook_rows(conn, hook["webhook_id"]) if r["state"] == "delivered"]
        )
        store.delete_webhook(conn, world.clinic_id, hook["webhook_id"])
    assert len(rx.requests) == 3 and len(rx.accepted()) == 1
    attempts = _attempts(conn, row["delivery_id"])
    assert [(a["ok"], a["status_code"]) for a in attempts] == [(False, 500), (False, 503), (True, 200)]
    assert {r.headers["Idempotency-Key"] for r in rx.requests} == {str(row["delivery_id"])}
    accepted = rx.accepted()[0]
    assert verify(hook["secret"], accepted.headers["Pulsewire-Signature"], accepted.body, tolerance_s=300)
    assert not verify("whsec_wrong", accepted.headers["Pulsewire-Signature"], accepted.body, 300)
    body = json.loads(accepted.body)
    assert (body["event"], body["alert"]["rule_key"]) == ("opened", "implant.device_reset")


def test_a_delivery_costs_three_round_trips(conn: Conn, world: World, db_url: str) -> None:
    """BEGIN with the question which orgs are due, the claim, then the attempt, the row's new state
    and COMMIT together (six round trips before)."""
    world.add_device("icd-trips-out")
    channels = Channels(
        None, None, "relay@test", timeout_s=5.0, egress_policy=EgressPolicy(allow_private=True)
    )
    with webhook_receiver() as rx, connect(db_url, autocommit=True) as worker:
        hook = store.create_webhook(conn, world.clinic_id, rx.url)
        try:
            commit_batch(
                conn, "icd-trips-out", events=[(datetime.now(UTC), "device_reset", {"reason": "por"})]
            )
            evaluate(db_url)
            sent = [
                round_trips(worker, lambda: deliver_one(worker, channels, "t", RetryPolicy()))
                for _ in range(4)
            ]
            assert sent == [3, 3, 3, 2]  # the webhook and two MQTT rows (no broker: failed), then none due
            assert len(rx.accepted()) == 1
            [row] = _webhook_rows(conn, hook["webhook_id"])
            assert (row["state"], row["attempts"]) == ("delivered", 1)
            assert len(_attempts(conn, row["delivery_id"])) == 1
        finally:
            channels.close()
            store.delete_webhook(conn, world.clinic_id, hook["webhook_id"])


def test_receiver_that_never_succeeds_goes_dead_with_last_error(
    conn: Conn, world: World, worker: RelayWorker
) -> None:
    world.add_device("icd-dead")
    with webhook_receiver(script=[500] * 10) as rx:
        hook = store.create_webhook(conn, world.clinic_id, rx.url)
        commit_batch(conn, "icd-dead", events=[(datetime.now(UTC), "device_reset", {})])
        [row] = wait_for(lambda: [r for r in _webhook_rows(conn, hook["webhook_id"]) if r["state"] == "dead"])
        store.delete_webhook(conn, world.clinic_id, hook["webhook_id"])
    assert row["attempts"] == 4 and row["last_error"].startswith("HTTP 500")
    assert len(_attempts(conn, row["delivery_id"])) == 4 == len(rx.requests)
    listed = store.list_deliveries(conn, world.clinic_id, state="dead")
    assert any(d["delivery_id"] == row["delivery_id"] and len(d["attempt_log"]) == 4 for d in listed)


def test_mqtt_vendor_copy_carries_no_owner_or_clinical_data(
    conn: Conn, world: World, settings: Settings, worker: RelayWorker
) -> None:
    world.add_device("icd-mqtt")
    got: list[tuple[str, dict[str, Any]]] = []
    subscribed = threading.Event()
    target = settings.mqtt()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-relay-sub", protocol=mqtt.MQTTv5)
    client.username_pw_set(target.username, target.password)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    client.connect(target.host, target.port)
    client.subscribe(topics.org_alerts_filter(), qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(5)
        now = datetime.now(UTC)
        commit_batch(
            conn,
            "icd-mqtt",
            [(now, "heart_rate_bpm", 180), (now, "lead_impedance_rv_ohm", 5000)],
            [(now, "shock_delivered", {"energy_j": 35, "success": True})],
        )
        wait_for(
            lambda: len([t for t, b in got if b["alert"].get("device", {}).get("serial") == "ICD-MQTT"]) >= 3,
            what="three MQTT messages",
        )
    finally:
        client.loop_stop()
        client.disconnect()
    mine = [(t, b) for t, b in got if b["alert"]["device"].get("serial") == "ICD-MQTT"]
    vendor = [b for t, b in mine if t == topics.org_alerts(world.implant_vendor_id)]
    clinic = [b for t, b in mine if t == topics.org_alerts(world.clinic_id)]
    assert {b["alert"]["rule_key"] for b in clinic} >= {
        "implant.shock_delivered",
        "implant.lead_impedance_range",
    }
    assert [b["alert"]["rule_key"] for b in vendor] == ["implant.lead_impedance_range"]
    for body in vendor:
        assert_vendor_safe(body)
    for view in store.list_alerts(conn, store.Viewer("vendor", world.implant_vendor_id)):
        assert_vendor_safe(view)


def test_two_workers_never_deliver_one_row_twice(conn: Conn, world: World, settings: Settings) -> None:
    for i in range(10):
        world.add_device(f"veh-pair-{i}", kind="vehicle")
    workers = [RelayWorker(_config(settings, delivery_threads=3, worker=f"w{n}")) for n in range(2)]
    with webhook_receiver(delay_s=0.01) as rx:
        hooks = [store.create_webhook(conn, world.garage_id, rx.url) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            for i in range(10):
                commit_batch(conn, f"veh-pair-{i}", events=[(datetime.now(UTC), "mil_on", {})])
            wait_for(lambda: len(rx.requests) >= 30, what="30 deliveries")
            ids = {h["webhook_id"] for h in hooks}
            wait_for(lambda: all(r["state"] == "delivered" for i in ids for r in _webhook_rows(conn, i)))
        finally:
            for w in workers:
                w.stop()
        for h in hooks:
            store.delete_webhook(conn, world.garage_id, h["webhook_id"])
    keys = [r.headers["Idempotency-Key"] for r in rx.requests]
    assert len(keys) == 30 == len(set(keys))
    workers_used = {
        a["worker"].split("/")[0]
        for a in conn.execute(
            "SELECT worker FROM delivery_attempts WHERE delivery_id = ANY(%s)", ([int(k) for k in keys],)
        )
    }
    assert workers_used <= {"w0", "w1"}


@pytest.mark.slow
def test_worker_killed_mid_delivery_loses_nothing(conn: Conn, world: World, settings: Settings) -> None:
    world.add_device("icd-kill")
    env = {
        **os.environ,
        "PULSEWIRE_DATABASE_URL": settings.require_database_url(),
        "PULSEWIRE_MQTT_URL": settings.require_mqtt_url(),
    }
    code = "from pulsewire.cli import main; raise SystemExit(main(['relay', '--delivery-threads', '1']))"
    with webhook_receiver(delay_s=1.5) as rx:
        hook = store.create_webhook(conn, world.clinic_id, rx.url)
        proc = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            commit_batch(conn, "icd-kill", events=[(datetime.now(UTC), "device_reset", {})])
            # The request is in flight (the receiver sleeps before answering): kill the worker.
            wait_for(
                lambda: conn.execute(
                    "SELECT 1 FROM outbox WHERE webhook_id = %s", (hook["webhook_id"],)
                ).fetchone(),
                what="the outbox row",
            )
            wait_for(lambda: _in_flight(conn), what="a delivery in flight")
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        [row] = _webhook_rows(conn, hook["webhook_id"])
        assert row["state"] == "pending" and _attempts(conn, row["delivery_id"]) == []
        rx.delay_s = 0
        survivor = RelayWorker(_config(settings))
        survivor.start()
        try:
            wait_for(lambda: _webhook_rows(conn, hook["webhook_id"])[0]["state"] == "delivered", timeout_s=15)
        finally:
            survivor.stop()
        store.delete_webhook(conn, world.clinic_id, hook["webhook_id"])
    assert len(_attempts(conn, row["delivery_id"])) == 1
    # Delivered at least once; a receiver deduplicates the killed worker's copy by Idempotency-Key.
    assert {r.headers["Idempotency-Key"] for r in rx.requests} == {str(row["delivery_id"])}


def _in_flight(conn: Conn) -> bool:
    # A row locked by a worker's open transaction is skipped by SKIP LOCKED: that is "in flight".
    pending = "SELECT delivery_id FROM outbox WHERE state = 'pending' AND channel = 'webhook'"
    with conn.transaction():
        free = conn.execute(pending + " FOR UPDATE SKIP LOCKED").fetchall()
        total = conn.execute(pending).fetchall()
    return len(total) > len(free)


def test_email_over_a_real_smtp_server(conn: Conn, world: World, settings: Settings) -> None:
    world.add_device("icd-mail")
    with smtp_inbox() as inbox:
        store.set_contacts(conn, world.clinic_id, ["oncall@clinic.example"])
        w = RelayWorker(_config(settings, smtp_url=inbox.url))
        w.start()
        try:
            commit_batch(conn, "icd-mail", events=[(datetime.now(UTC), "integrity_fault", {})])
            wait_for(lambda: inbox.messages, what="an e-mail")
        finally:
            w.stop()
            store.set_contacts(conn, world.clinic_id, [])
    [(rcpt, msg)] = inbox.messages
    assert rcpt == ["oncall@clinic.example"]
    assert msg["Subject"].startswith("[Pulsewire RED] Device integrity fault")
    [row] = conn.execute("SELECT * FROM outbox WHERE channel = 'email'").fetchall()
    assert row["state"] == "delivered" and row["audience"] == "provider"


async def test_sse_feed_gives_each_audience_its_view(world: World, db_url: str) -> None:
    await asyncio.to_thread(world.add_device, "icd-sse")
    vendor_feed = sse.subscribe(db_url, store.Viewer("vendor", world.implant_vendor_id))
    provider_feed = sse.subscribe(db_url, store.Viewer("provider", world.clinic_id))
    assert (await anext(vendor_feed))["event"] == "ready"  # both LISTEN before the alerts commit
    assert (await anext(provider_feed))["event"] == "ready"
    first_vendor = asyncio.ensure_future(anext(vendor_feed))
    first_provider = asyncio.ensure_future(anext(provider_feed))

    def write() -> None:
        from tests.relay_support import evaluate

        with connect(db_url, autocommit=True) as c:
            now = datetime.now(UTC)
            commit_batch(c, "icd-sse", events=[(now, "atp_delivered", {})])
            evaluate(db_url)
            commit_batch(c, "icd-sse", events=[(now, "device_reset", {})])
            evaluate(db_url)

    await asyncio.to_thread(write)
    provider = await asyncio.wait_for(first_provider, 10)
    vendor = await asyncio.wait_for(first_vendor, 10)
    assert provider["alert"]["rule_key"] == "implant.atp_delivered"
    assert vendor["alert"]["rule_key"] == "implant.device_reset"  # the clinical one never reached it
    assert_vendor_safe(vendor)
    await vendor_feed.aclose()
    await provider_feed.aclose()
