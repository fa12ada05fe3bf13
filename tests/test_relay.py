"""The rule engine against a real PostgreSQL: event time, one alert per condition, auto-resolve,
late data, restarts, absence, escalation, audiences, and the store the API calls."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pulsewire.db import connect
from relay import store
from relay.engine import EngineConfig, evaluate_device, evaluate_one, pending_devices
from relay.rules import effective_rules, seed_defaults
from relay.tick import check_silences, escalate
from tests.fix_db import World
from tests.helpers import round_trips, statements
from tests.relay_support import alerts_of, assert_vendor_safe, commit_batch, evaluate

Conn = psycopg.Connection[dict[str, Any]]
CFG = EngineConfig()


pytestmark = pytest.mark.usefixtures("default_rules")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _outbox(conn: Conn, alert_id: int) -> list[dict[str, Any]]:
    return list(conn.execute("SELECT * FROM outbox WHERE alert_id = %s ORDER BY delivery_id", (alert_id,)))


def test_seeding_is_idempotent(conn: Conn) -> None:
    seed_defaults(conn)
    row = conn.execute("SELECT count(*) AS n FROM rules WHERE provider_org_id IS NULL").fetchone()
    assert row is not None and row["n"] == 24


def test_persisting_condition_is_one_alert_and_auto_resolves(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("icd-persist")
    t = _now() - timedelta(seconds=60)
    for i in range(4):  # four batches, all out of range: one alert
        commit_batch(conn, "icd-persist", [(t + timedelta(seconds=i), "lead_impedance_rv_ohm", 3500 + i)])
        evaluate(db_url)
    [alert] = alerts_of(conn, "icd-persist")
    assert (alert["rule_key"], alert["state"], alert["severity"], alert["late"]) == (
        "implant.lead_impedance_range",
        "open",
        "red",
        False,
    )
    assert alert["values"] == {"lead_impedance_rv_ohm": 3503}
    assert [o["event"] for o in _outbox(conn, alert["alert_id"])] == ["opened"] * 2  # mqtt x 2 audiences
    commit_batch(conn, "icd-persist", [(t + timedelta(seconds=10), "lead_impedance_rv_ohm", 600)])
    evaluate(db_url)
    alert, jump = alerts_of(conn, "icd-persist")
    assert jump["rule_key"] == "implant.lead_impedance_jump"  # 3500 -> 600 is a jump too
    assert alert["state"] == "resolved" and alert["ended_at"] == t + timedelta(seconds=10)
    assert [o["event"] for o in _outbox(conn, alert["alert_id"])].count("resolved") == 2
    actions = [
        h["action"]
        for h in conn.execute(
            "SELECT action FROM alert_history WHERE alert_id = %s ORDER BY history_id", (alert["alert_id"],)
        )
    ]
    assert actions == ["opened", "resolved"]


def test_event_alert_routes_to_both_audiences_vendor_minimal(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("icd-eri", firmware="4.2.1")
    commit_batch(
        conn, "icd-eri", [(_now(), "heart_rate_bpm", 72)], [(_now(), "battery_status", {"status": "ERI"})]
    )
    evaluate(db_url)
    [alert] = alerts_of(conn, "icd-eri")
    assert (alert["rule_key"], alert["class"]) == ("implant.battery_eri", "technical")
    rows = _outbox(conn, alert["alert_id"])
    assert {(o["audience"], o["org_id"]) for o in rows} == {
        ("provider", world.clinic_id),
        ("vendor", world.implant_vendor_id),
    }
    vendor = json.loads(next(o["body"] for o in rows if o["audience"] == "vendor"))
    assert vendor["alert"]["device"] == {
        "serial": "ICD-ERI",
        "model": "Evera XT DR",
        "firmware": "4.2.1",
        "kind": "implant",
    }
    assert_vendor_safe(vendor)
    provider = json.loads(next(o["body"] for o in rows if o["audience"] == "provider"))
    assert provider["alert"]["owner"]["name"] == "Ada Patient"


def test_clinical_alert_goes_to_provider_only(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("icd-shock")
    commit_batch(conn, "icd-shock", events=[(_now(), "shock_delivered", {"energy_j": 35, "success": False})])
    evaluate(db_url)
    [alert] = alerts_of(conn, "icd-shock")
    assert (alert["rule_key"], alert["severity"], alert["class"]) == (
        "implant.shock_delivered",
        "red",
        "clinical",
    )
    assert {o["audience"] for o in _outbox(conn, alert["alert_id"])} == {"provider"}
    assert (
        store.list_alerts(conn, store.Viewer("vendor", world.implant_vendor_id), device_id="icd-shock") == []
    )
    with pytest.raises(store.NotFound):
        store.get_alert(conn, store.Viewer("vendor", world.implant_vendor_id), alert["alert_id"])


def test_repeated_events_update_the_open_alert(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("veh-dtc", kind="vehicle")
    t = _now()
    for i, code in enumerate(["P0171", "P0174"]):
        commit_batch(
            conn,
            "veh-dtc",
            events=[(t + timedelta(seconds=i), "dtc_set", {"code": code, "state": "confirmed"})],
        )
        evaluate(db_url)
    [alert] = alerts_of(conn, "veh-dtc")
    assert alert["occurrences"] == 2 and alert["values"]["code"] == "P0174"
    assert len(_outbox(conn, alert["alert_id"])) == 1  # garage's MQTT copy, paged once


def test_late_nightly_upload_is_recorded_late_and_never_escalates(
    conn: Conn, world: World, db_url: str
) -> None:
    world.add_device("icd-night")
    night = _now() - timedelta(hours=6)
    readings = [
        (night + timedelta(minutes=i), "capture_threshold_rv_v", v)
        for i, v in enumerate([1.0, 3.1, 3.3, 1.5, 1.0])
    ]
    commit_batch(conn, "icd-night", readings)
    evaluate(db_url)
    [alert] = alerts_of(conn, "icd-night")
    assert (alert["late"], alert["state"], alert["severity"]) == (True, "resolved", "red")
    assert alert["started_at"] == night + timedelta(minutes=1)
    bodies = [json.loads(o["body"]) for o in _outbox(conn, alert["alert_id"])]
    assert len(bodies) == 2 and all(b["event"] == "opened" and b["alert"]["late"] for b in bodies)
    assert all(b["alert"]["state"] == "resolved" for b in bodies)
    # Still open and late: never escalated either.
    commit_batch(conn, "icd-night", [(night + timedelta(minutes=30), "capture_threshold_rv_v", 4.0)])
    evaluate(db_url)
    assert alert["alert_id"] not in escalate(conn, CFG, after_s=0)


def test_out_of_order_episode_is_late_and_replays_create_nothing(
    conn: Conn, world: World, db_url: str
) -> None:
    world.add_device("icd-ooo")
    now = _now()
    commit_batch(conn, "icd-ooo", [(now, "hv_impedance_ohm", 50)])
    evaluate(db_url)
    past = now - timedelta(minutes=20)
    old = [(past, "hv_impedance_ohm", 15), (past + timedelta(seconds=30), "hv_impedance_ohm", 60)]
    commit_batch(conn, "icd-ooo", old)
    evaluate(db_url)
    [alert] = alerts_of(conn, "icd-ooo")
    assert (alert["rule_key"], alert["late"], alert["state"]) == (
        "implant.hv_impedance_low",
        True,
        "resolved",
    )
    # The same range queued again (a redelivered batch) makes no second alert.
    conn.execute(
        "INSERT INTO eval_queue (device_id, min_ts, max_ts) VALUES (%s, %s, %s)",
        ("icd-ooo", past, past + timedelta(seconds=30)),
    )
    evaluate(db_url)
    assert len(alerts_of(conn, "icd-ooo")) == 1


def test_crash_mid_evaluation_loses_and_repeats_nothing(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("icd-crash")
    commit_batch(conn, "icd-crash", events=[(_now(), "device_reset", {"reason": "watchdog"})])
    with connect(db_url) as worker:
        worker.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with pytest.raises(RuntimeError), worker.transaction():
            assert evaluate_device(worker, "icd-crash", CFG) == 1
            raise RuntimeError("worker killed before commit")
    assert alerts_of(conn, "icd-crash") == []
    assert evaluate(db_url) == 1
    assert evaluate(db_url) == 0
    assert [a["rule_key"] for a in alerts_of(conn, "icd-crash")] == ["implant.device_reset"]


def test_a_red_alert_is_raised_in_five_round_trips_and_readings_in_three(
    conn: Conn, world: World, db_url: str
) -> None:
    """Under load every wait for PostgreSQL queues for a CPU, so the alert's path counts them:
    BEGIN goes with the reads, COMMIT with the writes, and a rule that fires writes without a
    savepoint of its own (nine round trips before, five before that for readings)."""
    world.add_device("icd-trips")
    t = _now() - timedelta(seconds=30)
    readings = [(t + timedelta(seconds=i), "lead_impedance_rv_ohm", 600.0 + i) for i in range(20)]
    with connect(db_url, autocommit=True) as worker:
        commit_batch(conn, "icd-trips", readings)
        assert round_trips(worker, lambda: evaluate_one(worker, "icd-trips", CFG)) == 3
        commit_batch(
            conn, "icd-trips", events=[(t + timedelta(seconds=25), "device_reset", {"reason": "wdt"})]
        )
        assert round_trips(worker, lambda: evaluate_one(worker, "icd-trips", CFG)) == 5
        # However many rule states change, the writes are one statement: BEGIN, five reads, the
        # readings, the events, the writes, COMMIT.
        more = [(t + timedelta(seconds=26 + i), "lead_impedance_rv_ohm", 650.0 + i) for i in range(3)]
        commit_batch(conn, "icd-trips", more)
        written = "SELECT rule_key, updated_at FROM rule_state WHERE device_id = 'icd-trips'"
        before = {r["rule_key"]: r["updated_at"] for r in conn.execute(written)}
        assert statements(worker, lambda: evaluate_one(worker, "icd-trips", CFG)) == 10
        after = {r["rule_key"]: r["updated_at"] for r in conn.execute(written)}
        assert len([key for key, at in after.items() if at != before.get(key)]) >= 2
    [alert] = alerts_of(conn, "icd-trips")
    assert alert["rule_key"] == "implant.device_reset"
    assert [o["event"] for o in _outbox(conn, alert["alert_id"])] == ["opened"] * 2  # mqtt x 2 audiences


def test_the_worker_delivering_is_woken_after_a_commit_that_queued_deliveries(
    conn: Conn, world: World, db_url: str
) -> None:
    # The relay's own delivery threads start without waiting for the notification's round trip.
    world.add_device("icd-wake")
    woken: list[int] = []

    def wake() -> None:  # called after the commit: the rows are there to claim
        woken.append(len(conn.execute("SELECT 1 FROM outbox o JOIN alerts a USING (alert_id)"
                                      " WHERE a.device_id = 'icd-wake'").fetchall()))  # fmt: skip

    cfg = EngineConfig(on_deliveries=wake)
    commit_batch(conn, "icd-wake", [(_now(), "heart_rate_bpm", 72)])
    assert evaluate(db_url, cfg) == 1 and woken == [], "readings that alert nobody wake nobody"
    commit_batch(conn, "icd-wake", events=[(_now(), "device_reset", {"reason": "watchdog"})])
    assert evaluate(db_url, cfg) == 1
    assert len(woken) == 1 and woken[0] > 0


def test_device_lock_keeps_a_second_worker_out(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("icd-lock")
    commit_batch(conn, "icd-lock", events=[(_now(), "device_reset", {})])
    with connect(db_url) as first, connect(db_url) as second, first.transaction():
        assert evaluate_device(first, "icd-lock", CFG) == 1
        with second.transaction():
            assert evaluate_device(second, "icd-lock", CFG) == 0
    assert len(alerts_of(conn, "icd-lock")) == 1


def test_silent_device_alerts_once_and_resolves_on_data(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("veh-quiet", kind="vehicle", heartbeat_s=1)
    conn.execute("UPDATE devices SET created_at = now() - interval '1 hour' WHERE device_id = 'veh-quiet'")
    opened = check_silences(conn, CFG)
    assert check_silences(conn, CFG) == []
    [alert] = [a for a in alerts_of(conn, "veh-quiet") if a["alert_id"] in opened]
    assert (alert["rule_key"], alert["class"]) == ("vehicle.heartbeat_missed", "technical")
    commit_batch(conn, "veh-quiet", [(_now(), "battery_voltage_v", 12.6)])
    evaluate(db_url)
    [alert] = alerts_of(conn, "veh-quiet")
    assert alert["state"] == "resolved"


def test_unacknowledged_red_escalates_once(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("icd-esc")
    commit_batch(conn, "icd-esc", events=[(_now(), "integrity_fault", {})])
    evaluate(db_url)
    [alert] = alerts_of(conn, "icd-esc")
    assert escalate(conn, CFG, after_s=3600) == []
    assert alert["alert_id"] in escalate(conn, CFG, after_s=0)
    assert alert["alert_id"] not in escalate(conn, CFG, after_s=0)
    events = [o["event"] for o in _outbox(conn, alert["alert_id"])]
    assert events.count("escalated") == 2  # provider + vendor MQTT
    # An acknowledged one does not escalate.
    commit_batch(conn, "icd-esc", [(_now(), "charge_time_s", 20)])
    evaluate(db_url)
    [charge] = [a for a in alerts_of(conn, "icd-esc") if a["rule_key"] == "implant.charge_time_long"]
    user = conn.execute(
        "INSERT INTO users (email, display_name, role, org_id) VALUES "
        "('doc@example.org', 'Doc', 'provider_staff', %s) RETURNING user_id",
        (world.clinic_id,),
    ).fetchone()
    assert user is not None
    store.acknowledge(conn, world.clinic_id, charge["alert_id"], user["user_id"])
    assert charge["alert_id"] not in escalate(conn, CFG, after_s=0)


def test_store_ack_resolve_history_and_tenancy(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("veh-store", kind="vehicle")
    commit_batch(conn, "veh-store", events=[(_now(), "mil_on", {})])
    evaluate(db_url)
    [alert] = alerts_of(conn, "veh-store")
    aid = alert["alert_id"]
    user = conn.execute(
        "INSERT INTO users (email, display_name, role, org_id) VALUES "
        "('mech@example.org', 'Mech', 'provider_staff', %s) RETURNING user_id",
        (world.garage_id,),
    ).fetchone()
    assert user is not None
    with pytest.raises(store.NotFound):
        store.acknowledge(conn, world.clinic_id, aid, user["user_id"])
    assert store.acknowledge(conn, world.garage_id, aid, user["user_id"])["state"] == "acknowledged"
    with pytest.raises(store.Conflict):
        store.acknowledge(conn, world.garage_id, aid, user["user_id"])
    view = store.resolve(conn, world.garage_id, aid, user["user_id"])
    assert view["state"] == "resolved" and view["resolved_by"] == user["user_id"]
    history = store.get_alert(conn, store.Viewer("provider", world.garage_id), aid)["history"]
    assert [(h["action"], h["actor"]) for h in history][1:] == [
        ("acknowledged", f"user:{user['user_id']}"),
        ("resolved", f"user:{user['user_id']}"),
    ]
    assert [
        a["alert_id"]
        for a in store.list_alerts(conn, store.Viewer("provider", world.garage_id), device_id="veh-store")
    ] == [aid]


def test_store_webhooks_and_rules(conn: Conn, world: World) -> None:
    hook = store.create_webhook(conn, world.garage_id, "http://127.0.0.1:9/hook")
    assert hook["secret"].startswith("whsec_")
    listed = store.list_webhooks(conn, world.garage_id)
    assert [h["webhook_id"] for h in listed] == [hook["webhook_id"]] and "secret" not in listed[0]
    with pytest.raises(store.InvalidInput):
        store.create_webhook(conn, world.garage_id, "ftp://x")
    with pytest.raises(store.NotFound):
        store.delete_webhook(conn, world.clinic_id, hook["webhook_id"])
    store.delete_webhook(conn, world.garage_id, hook["webhook_id"])
    # Tuning a global default makes an override for this provider only.
    default = next(
        r for r in store.list_rules(conn, world.garage_id, "vehicle") if r["key"] == "vehicle.overheating"
    )
    tuned = store.patch_rule(conn, world.garage_id, default["rule_id"], {"params": {"value": 105}})
    assert tuned["provider_org_id"] == world.garage_id and tuned["params"]["value"] == 105
    world.add_device("veh-tuned", kind="vehicle")
    rules = {r.key: r for r in effective_rules(conn, "veh-tuned")}
    assert rules["vehicle.overheating"].params["value"] == 105
    with pytest.raises(store.RuleError):
        store.create_rule(
            conn,
            world.garage_id,
            {
                "key": "garage.bad",
                "name": "x",
                "device_kind": "vehicle",
                "kind": "threshold",
                "severity": "red",
                "class": "clinical",
                "params": {"metric": "rpm"},
            },
        )
    store.create_rule(
        conn,
        world.garage_id,
        {
            "key": "vehicle.overheating",
            "name": "off for this car",
            "device_kind": "vehicle",
            "device_id": "veh-tuned",
            "kind": "threshold",
            "severity": "red",
            "class": "clinical",
            "params": {"metric": "coolant_temp_c", "op": ">", "value": 1},
            "enabled": False,
        },
    )
    assert "vehicle.overheating" not in {r.key for r in effective_rules(conn, "veh-tuned")}


def test_overlapping_batches_are_not_read_twice(conn: Conn, world: World, db_url: str) -> None:
    world.add_device("icd-overlap")
    t = _now() - timedelta(minutes=1)
    commit_batch(
        conn, "icd-overlap", events=[(t, "vt_episode", {}), (t + timedelta(seconds=1), "vf_episode", {})]
    )
    evaluate(db_url)
    # A batch whose range covers what was already read (ingest batches overlap in time).
    conn.execute(
        "INSERT INTO eval_queue (device_id, min_ts, max_ts) VALUES (%s, %s, %s)",
        ("icd-overlap", t, t + timedelta(seconds=1)),
    )
    evaluate(db_url)
    assert alerts_of(conn, "icd-overlap") == []  # two episodes, not four
    commit_batch(conn, "icd-overlap", events=[(t + timedelta(seconds=2), "vt_episode", {})])
    evaluate(db_url)
    [alert] = alerts_of(conn, "icd-overlap")
    assert (alert["rule_key"], alert["values"]["count"]) == ("implant.vt_vf_cluster", 3)


def test_devices_with_queued_events_are_evaluated_first(db_url: str) -> None:
    now = datetime.now(UTC)
    with connect(db_url, autocommit=True) as c:
        c.execute("DELETE FROM eval_queue")
        for device_id, has_events in (("q-readings-1", False), ("q-readings-2", False), ("q-event", True)):
            c.execute(
                "INSERT INTO eval_queue (device_id, min_ts, max_ts, has_events) VALUES (%s, %s, %s, %s)",
                (device_id, now, now, has_events),
            )
        assert pending_devices(c) == ["q-event", "q-readings-1", "q-readings-2"]
        c.execute("DELETE FROM eval_queue")


def test_tenants_take_turns_in_the_evaluation_queue(db_url: str, world: World) -> None:
    """Five of the garage's cars queued events before one implant of the clinic did: the implant is
    evaluated second, not sixth; then the garage's other cars, oldest first."""
    now = datetime.now(UTC)
    cars = [f"q-car-{n}" for n in range(5)]
    for device_id in [*cars, "q-implant"]:
        world.add_device(device_id, kind="vehicle" if device_id in cars else "implant")
    with connect(db_url, autocommit=True) as c:
        c.execute("DELETE FROM eval_queue")
        for device_id in [*cars, "q-implant"]:
            c.execute(
                "INSERT INTO eval_queue (device_id, min_ts, max_ts, has_events) VALUES (%s, %s, %s, true)",
                (device_id, now, now),
            )
        c.execute(
            "INSERT INTO eval_queue (device_id, min_ts, max_ts, has_events) VALUES (%s, %s, %s, false)",
            ("q-implant-readings", now, now),
        )
        try:
            assert pending_devices(c) == [cars[0], "q-implant", *cars[1:], "q-implant-readings"]
        finally:
            c.execute("DELETE FROM eval_queue")
