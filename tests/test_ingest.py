"""Ingest end to end, in-process: real Mosquitto → IngestService → real PostgreSQL."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ingest import IngestService
from pulsewire import wire
from pulsewire.db import connect
from pulsewire.settings import Settings
from pulsewire.stack import StackInfo
from schemas import topics
from tests.fix_db import World
from tests.ingest_support import (
    Message,
    Publisher,
    event,
    in_process_statuses,
    iso,
    running_ingest,
    settle,
    status,
    telemetry,
    wait_for,
)

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[IngestService]:
    with running_ingest(settings, "ingest") as svc:
        yield svc


@pytest.fixture(scope="module")
def pub(settings: Settings, service: IngestService) -> Iterator[Publisher]:
    with Publisher(settings.mqtt()) as publisher:
        yield publisher


def count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


def test_paho_telemetry_and_events_land_with_values_and_timestamps(
    world: World, pub: Publisher, conn: Conn
) -> None:
    world.add_device("imp-land", "implant")
    world.add_device("veh-land", "vehicle")
    t0 = datetime(2026, 11, 20, 3, 0, 0, tzinfo=UTC)  # old data (a nightly upload) is accepted
    msgs = [
        telemetry(
            "imp-land",
            seq,
            [("heart_rate_bpm", 60 + seq), ("battery_voltage_v", 2.9)],
            ts=t0 + timedelta(minutes=seq),
        )
        for seq in range(20)
    ]
    msgs += [event("veh-land", seq, "dtc_set", {"code": "P0171", "state": "confirmed"}) for seq in range(5)]
    pub.publish_all(msgs)
    wait_for(lambda: count(conn, "SELECT count(*) FROM readings WHERE device_id = 'imp-land'") == 40, 15,
             "40 readings")  # fmt: skip
    wait_for(
        lambda: count(conn, "SELECT count(*) FROM events WHERE device_id = 'veh-land'") == 5, 15, "5 events"
    )
    row = conn.execute(
        "SELECT ts, value FROM readings WHERE device_id = 'imp-land' AND metric = 'heart_rate_bpm' "
        "ORDER BY ts DESC LIMIT 1"
    ).fetchone()
    assert row == {"ts": t0 + timedelta(minutes=19), "value": 79.0}
    ev = conn.execute("SELECT type, data, boot_id, seq FROM events WHERE device_id = 'veh-land' AND seq = 4")
    assert ev.fetchone() == {"type": "dtc_set", "data": {"code": "P0171", "state": "confirmed"},
                             "boot_id": "b1", "seq": 4}  # fmt: skip
    dev = conn.execute("SELECT boot_id, last_seq, last_seen_at FROM devices WHERE device_id = 'imp-land'")
    got = dev.fetchone()
    assert got is not None and got["boot_id"] == "b1" and got["last_seq"] == 19 and got["last_seen_at"]
    span = conn.execute(
        "SELECT min(min_ts) AS lo, max(max_ts) AS hi FROM eval_queue WHERE device_id = 'imp-land'"
    ).fetchone()
    assert span == {"lo": t0, "hi": t0 + timedelta(minutes=19)}
    # Batches with events are flagged so the rule engine takes them first; telemetry-only ones are not.
    flags = conn.execute(
        "SELECT device_id, bool_and(has_events) AS all_events, bool_or(has_events) AS any_events"
        " FROM eval_queue WHERE device_id IN ('imp-land', 'veh-land') GROUP BY device_id ORDER BY 1"
    ).fetchall()
    assert [(f["device_id"], f["all_events"], f["any_events"]) for f in flags] == [
        ("imp-land", False, False),
        ("veh-land", True, True),
    ]
    assert count(conn, "SELECT count(*) FROM quarantine WHERE device_id IN ('imp-land', 'veh-land')") == 0


def test_mosquitto_pub_with_the_devices_own_credentials(world: World, stack_info: StackInfo, conn: Conn,
                                                        service: IngestService) -> None:  # fmt: skip
    creds = world.add_device("veh-cli", "vehicle")
    topic, payload = telemetry("veh-cli", 7, [("coolant_temp_c", 91.5), ("rpm", 2100.0)])
    subprocess.run(
        ["mosquitto_pub", "-h", stack_info.mqtt_host, "-p", str(stack_info.mqtt_port), "-V", "mqttv5",
         "--cafile", str(stack_info.ca_file),
         "-u", creds.mqtt_username, "-P", creds.mqtt_password, "-q", "1", "-t", topic,
         "-m", payload.decode()],
        check=True, timeout=15,
    )  # fmt: skip
    wait_for(lambda: count(conn, "SELECT count(*) FROM readings WHERE device_id = 'veh-cli'") == 2, 15,
             "mosquitto_pub's readings")  # fmt: skip
    rows = conn.execute("SELECT metric, value FROM readings WHERE device_id = 'veh-cli' ORDER BY metric")
    assert rows.fetchall() == [
        {"metric": "coolant_temp_c", "value": 91.5},
        {"metric": "rpm", "value": 2100.0},
    ]


def _bad_messages(now: datetime) -> list[tuple[str, Message]]:
    dev = "imp-q"
    good = json.loads(telemetry(dev, 0, [("heart_rate_bpm", 70)])[1])
    topic = topics.telemetry(dev)

    def tele(**changes: Any) -> bytes:
        return json.dumps({**good, **changes}).encode()

    reading = {"ts": iso(now), "metric": "heart_rate_bpm", "value": 70.0}
    big = [dict(reading, value=70.0 + i % 50) for i in range(5_000)]
    tiny = [{"ts": iso(now), "metric": "r_wave_mv", "value": 1} for _ in range(10_001)]
    return [
        ("malformed_json", (topic, b'{"schema": "pulsewire.telemetry/1", "device_id": ')),
        ("wrong_schema", (topic, tele(schema="pulsewire.telemetry/9"))),
        ("wrong_schema", (topic, json.dumps({k: v for k, v in good.items() if k != "schema"}).encode())),
        ("invalid_payload", (topic, tele(seq="not a number"))),
        ("oversized", (topic, tele(readings=big))),
        ("too_many_readings", (topic, tele(readings=tiny))),
        ("device_mismatch", (topic, tele(device_id="imp-other"))),
        ("unregistered_device", telemetry("imp-nobody", 1, [("heart_rate_bpm", 70)])),
        ("unknown_metric", (topic, tele(readings=[reading, dict(reading, metric="rpm")]))),
        ("out_of_range", (topic, tele(readings=[reading, dict(reading, value=400.0)]))),
        ("non_finite", (topic, tele(readings=[dict(reading, value=math.nan)]))),
        ("future_timestamp", (topic, tele(readings=[dict(reading, ts=iso(now + timedelta(minutes=10)))]))),
        ("unknown_event_type", event(dev, 99, "dtc_set")),
        ("unknown_topic", ("pw/v1/dev/-not-an-id/telemetry", tele())),
    ]


def test_every_quarantine_reason_amid_valid_messages(world: World, pub: Publisher, conn: Conn) -> None:
    world.add_device("imp-q", "implant")
    bad = _bad_messages(datetime.now(UTC))
    msgs: list[Message] = []
    for i, (_, message) in enumerate(bad):
        msgs.append(telemetry("imp-q", 1000 + i, [("heart_rate_bpm", 60.0 + i)]))
        msgs.append(message)
    pub.publish_all(msgs)
    recent = "SELECT count(*) FROM quarantine WHERE received_at > now() - interval '1 min'"
    wait_for(lambda: count(conn, recent) >= len(bad), 20, "every bad message in quarantine")
    wait_for(lambda: count(conn, "SELECT count(*) FROM readings WHERE device_id = 'imp-q'") == len(bad), 15,
             "every valid reading")  # fmt: skip
    # This test's rows only: the broker is the session's, so another module's late message may land here.
    ours = sorted({topic for _, (topic, _) in bad})
    rows = conn.execute(
        "SELECT reason, detail, payload, topic FROM quarantine WHERE topic = ANY(%s)", (ours,)
    ).fetchall()
    assert Counter(r["reason"] for r in rows) == Counter(reason for reason, _ in bad)
    by_reason = {r["reason"]: r for r in rows}
    assert "heart_rate_bpm: 400.0 outside [20, 300]" in by_reason["out_of_range"]["detail"]
    assert "1 of 2 readings bad" in by_reason["unknown_metric"]["detail"]
    assert by_reason["invalid_payload"]["detail"].startswith("seq:")
    assert bytes(by_reason["malformed_json"]["payload"]) == bad[0][1][1]
    assert by_reason["unknown_topic"]["topic"] == "pw/v1/dev/-not-an-id/telemetry"
    values = conn.execute("SELECT value FROM readings WHERE device_id = 'imp-q' ORDER BY value").fetchall()
    assert [r["value"] for r in values] == [60.0 + i for i in range(len(bad))]


def test_redelivery_stores_nothing_twice_and_gaps_are_recorded(
    world: World, pub: Publisher, conn: Conn, service: IngestService
) -> None:
    world.add_device("imp-dup", "implant")
    first = [telemetry("imp-dup", seq, [("heart_rate_bpm", 70.0 + seq)]) for seq in (1, 2, 3)]
    pub.publish_all(first)
    pub.publish_all([first[2], first[1], telemetry("imp-dup", 6, [("heart_rate_bpm", 76.0)])])
    wait_for(lambda: count(conn, "SELECT count(*) FROM ingest_log WHERE device_id = 'imp-dup'") == 4, 15,
             "4 distinct messages")  # fmt: skip
    wait_for(lambda: service.totals.duplicates >= 2, 5, "the redeliveries counted")
    assert count(conn, "SELECT count(*) FROM readings WHERE device_id = 'imp-dup'") == 4
    gaps = conn.execute("SELECT boot_id, first_seq, last_seq FROM seq_gaps WHERE device_id = 'imp-dup'")
    assert gaps.fetchall() == [{"boot_id": "b1", "first_seq": 4, "last_seq": 5}]
    # A late seq fills part of the gap; a new boot starts a new stream without a gap.
    pub.publish_all([telemetry("imp-dup", 4, [("heart_rate_bpm", 74.0)]),
                     telemetry("imp-dup", 0, [("heart_rate_bpm", 50.0)], boot_id="b2")])  # fmt: skip
    wait_for(lambda: count(conn, "SELECT count(*) FROM ingest_log WHERE device_id = 'imp-dup'") == 6, 15,
             "the late and the new-boot message")  # fmt: skip
    gaps = conn.execute("SELECT boot_id, first_seq, last_seq FROM seq_gaps WHERE device_id = 'imp-dup'")
    assert gaps.fetchall() == [{"boot_id": "b1", "first_seq": 5, "last_seq": 5}]
    streams = conn.execute(
        "SELECT boot_id, max_seq, messages FROM device_streams WHERE device_id = 'imp-dup' ORDER BY boot_id"
    ).fetchall()
    assert streams == [{"boot_id": "b1", "max_seq": 6, "messages": 5},
                       {"boot_id": "b2", "max_seq": 0, "messages": 1}]  # fmt: skip
    assert (
        count(conn, "SELECT sum(value) FROM readings WHERE device_id = 'imp-dup'")
        == 71 + 72 + 73 + 76 + 74 + 50
    )


def test_a_bad_message_delivered_again_is_quarantined_once(
    world: World, pub: Publisher, conn: Conn, service: IngestService
) -> None:
    """The same bytes on the same topic again (a worker died before its ack, a device resent after a
    lost PUBACK) add a copy to the waiting row instead of a second row."""
    world.add_device("imp-redo", "implant")
    bad = ("pw/v1/dev/imp-redo/telemetry", b'{"schema": "pulsewire.telemetry/1", "device_id": "imp-redo", ')
    other = ("pw/v1/dev/imp-redo/telemetry", b'{"schema": "pulsewire.telemetry/1", "seq": ')
    seen = service.totals.quarantined["malformed_json"]

    def quarantined(n: int) -> bool:
        return service.totals.quarantined["malformed_json"] >= seen + n

    pub.publish_all([bad])
    wait_for(lambda: quarantined(1), 10, "the first delivery quarantined")
    pub.publish_all([bad, bad, other])  # again, and twice within what may be one batch
    wait_for(lambda: quarantined(4), 10, "the copies counted")
    rows = conn.execute(
        "SELECT payload, copies, last_received_at > received_at AS later FROM quarantine"
        " WHERE topic = 'pw/v1/dev/imp-redo/telemetry' ORDER BY quarantine_id"
    ).fetchall()
    assert [(bytes(r["payload"]), r["copies"], r["later"]) for r in rows] == [
        (bad[1], 3, True),
        (other[1], 1, None),
    ]


def test_status_online_offline_updates_devices(world: World, pub: Publisher, conn: Conn) -> None:
    world.add_device("veh-st", "vehicle")
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)

    def online() -> Any:
        return conn.execute("SELECT online, status_at FROM devices WHERE device_id = 'veh-st'").fetchone()

    pub.publish_all([status("veh-st", "online", t)])
    wait_for(lambda: online()["online"] is True, 10, "online")
    pub.publish_all([status("veh-st", "offline", t - timedelta(seconds=30))])  # older: ignored
    pub.publish_all([telemetry("veh-st", 1, [("rpm", 800.0)])])  # a later batch, to know the status was seen
    wait_for(
        lambda: count(conn, "SELECT count(*) FROM readings WHERE device_id = 'veh-st'") == 1, 10, "reading"
    )
    assert online() == {"online": True, "status_at": t}
    pub.publish_all([status("veh-st", "offline", t + timedelta(seconds=5))])
    wait_for(lambda: online()["online"] is False, 10, "offline")
    pub.publish_all([("pw/v1/dev/veh-st/status", b"online")])  # bare form, stamped by the server
    wait_for(lambda: online()["online"] is True, 10, "bare online")


def test_device_registered_after_start_is_accepted_within_seconds(
    world: World, pub: Publisher, conn: Conn
) -> None:
    pub.publish_all([telemetry("imp-late", 1, [("heart_rate_bpm", 61.0)])])
    wait_for(lambda: count(conn, "SELECT count(*) FROM quarantine WHERE device_id = 'imp-late'") == 1, 10,
             "unregistered quarantine")  # fmt: skip
    world.add_device("imp-late", "implant")
    pub.publish_all([telemetry("imp-late", 2, [("heart_rate_bpm", 62.0)])])
    wait_for(lambda: count(conn, "SELECT count(*) FROM readings WHERE device_id = 'imp-late'") == 1, 10,
             "the new device's reading")  # fmt: skip


def test_metrics_count_what_happened(service: IngestService) -> None:
    text = service.metrics.text().decode()
    assert 'pulsewire_ingest_quarantined_total{reason="out_of_range"} 1.0' in text
    assert "pulsewire_ingest_readings_stored_total" in text
    assert service.totals.duplicates >= 2 and service.totals.gaps >= 1
    assert "pulsewire_ingest_queue_depth 0.0" in text


def test_a_new_ingest_gets_no_retained_copies(world: World, settings: Settings, conn: Conn,
                                              service: IngestService) -> None:  # fmt: skip
    """A device's retained status reaches the running ingest live; an ingest subscribing later (a new
    worker, or any worker's reconnect) must not be handed the retained copy again."""
    world.add_device("imp-barrier", "implant")
    topic, payload = status("imp-retired", "offline", datetime.now(UTC))
    with Publisher(settings.mqtt()) as publisher:
        publisher.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(15)
        try:
            mine = "SELECT coalesce(sum(copies), 0) FROM quarantine WHERE topic = %s"
            wait_for(lambda: count(conn, mine, topic) == 1, 15, "the live status quarantined")
            with running_ingest(settings, "retained") as late:
                settle(settings, "imp-barrier", [in_process_statuses(late)])
                quarantined = late.metrics.text().decode()
        finally:  # no retained message left for later modules
            publisher.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(15)
    assert count(conn, mine, topic) == 1
    assert 'quarantined_total{reason="unregistered_device"}' not in quarantined


def test_the_relay_is_told_which_devices_sent_events(world: World, pub: Publisher, db_url: str) -> None:
    # The notification names them, so a relay evaluates them at once (relay/turns.py); the queue
    # stays the truth for everything else.
    world.add_device("imp-hint", "implant")
    world.add_device("veh-hint", "vehicle")
    with connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {wire.EVAL_CHANNEL}")
        pub.publish_all(
            [telemetry("imp-hint", 0, [("heart_rate_bpm", 61)]), event("veh-hint", 0, "mil_on", {})]
        )
        named: list[str] = []
        deadline = time.monotonic() + 15
        while "veh-hint" not in named and time.monotonic() < deadline:
            named += [
                d for n in listener.notifies(timeout=1, stop_after=1) for d in wire.event_devices(n.payload)
            ]
    assert "veh-hint" in named
    assert "imp-hint" not in named, "a device that sent only readings is found by asking the queue"


def test_the_event_hint_fits_a_notification_and_ignores_what_is_not_a_device() -> None:
    many = [f"veh-{n:05d}" for n in range(2_000)]
    hint = wire._hint(many)
    assert 0 < len(hint.encode()) <= 4_000 and many[0] in hint.split(" ")
    assert wire.event_devices(hint) == many[: len(wire.event_devices(hint))]
    assert wire.event_devices("") == []
    assert wire.event_devices("a,b ../x veh-1  'x'") == ["veh-1"]
