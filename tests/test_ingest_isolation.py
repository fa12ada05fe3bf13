"""One device's hostile input stays with that device: refused with a reason, never taking a batch down.

The same hostile corpus goes through both validation paths (msgspec fast path, pydantic contract);
then end to end (real Mosquitto, real PostgreSQL): old readings, seq 2^63, NUL in event data, a 2 MiB
payload and a flood beyond the device's budget, each amid other devices' valid messages in the same
batches; PostgreSQL refusing a message anyway; quarantine bounds, expiry and replay.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from ingest import IngestService
from ingest._consumer import Consumer, shared_topics
from ingest._fastjson import fast_telemetry
from ingest.validate import Event, Quarantined, Telemetry, validate
from ingest.writer import BatchWriter
from pulsewire import registry
from pulsewire.cli import main
from pulsewire.errors import RegistryError
from pulsewire.quarantine import replay_quarantine
from pulsewire.settings import Settings
from pulsewire.storage import maintain
from schemas.payloads import EventPayload, TelemetryPayload
from tests.fix_api import assert_error
from tests.fix_db import World
from tests.ingest_support import (
    Message,
    Publisher,
    event,
    forget_session,
    running_ingest,
    sample_value,
    telemetry,
    wait_for,
)

Conn = psycopg.Connection[dict[str, Any]]
NOW = datetime(2026, 11, 23, 9, tzinfo=UTC)
RETENTION_DAYS = 400
KEEP = 4_096
BURST = 20
KEPT_PER_MIN = 100  # rate_limited payloads kept a minute per device; the rest are counted
TELE: dict[str, Any] = {
    "schema": "pulsewire.telemetry/1", "device_id": "veh-1", "boot_id": "b1", "seq": 3,
    "sent_at": "2026-11-23T08:00:00Z",
    "readings": [{"ts": "2026-11-23T08:00:00Z", "metric": "rpm", "value": 812.5}],
}  # fmt: skip
EVENT: dict[str, Any] = {
    "schema": "pulsewire.event/1", "device_id": "veh-1", "boot_id": "b1", "seq": 3,
    "ts": "2026-11-23T08:00:00Z", "type": "dtc_set", "data": {"code": "P0171"},
}  # fmt: skip


def _json(base: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**base, **changes}).encode()


# (payload, expected reason); `None` means accepted. `\u0000` in JSON text is the NUL character.
HOSTILE_TELEMETRY: list[tuple[bytes, str | None]] = [
    (_json(TELE), None),
    (_json(TELE, seq=2**63 - 1), None),
    (_json(TELE, seq=2**63), "invalid_payload"),
    (_json(TELE, seq=2**64), "invalid_payload"),
    (_json(TELE, seq=10**30), "invalid_payload"),
    (_json(TELE, boot_id="b\x001"), "nul_in_string"),
    (_json(TELE, boot_id="\x00"), "nul_in_string"),
    (_json(TELE, device_id="veh-1\x00"), "nul_in_string"),
    (_json(TELE, readings=[{**TELE["readings"][0], "metric": "rpm\x00"}]), "nul_in_string"),
    (_json(TELE, readings=[{**TELE["readings"][0], "ts": "2026-11-23T08:00:00Z\x00"}]), "nul_in_string"),
    (_json(TELE, extra={"k\x00": 1}), "nul_in_string"),
    (_json(TELE).replace(b'"b1"', b'"b\x00"'), "malformed_json"),  # a raw NUL is not JSON
    (_json(TELE).replace(b'"b1"', b'"\\\\u0000"'), None),  # an escaped backslash, then `u0000`: no NUL
    (_json(TELE, readings=[{**TELE["readings"][0], "ts": "1990-01-01T00:00:00Z"}]), "too_old"),
    (_json(TELE, readings=[{**TELE["readings"][0], "ts": "0001-01-01T00:00:00Z"}]), "too_old"),
]
HOSTILE_EVENTS: list[tuple[bytes, str | None]] = [
    (_json(EVENT), None),
    (_json(EVENT, data={"nested": [{"n": 2**63 - 1, "s": "ok"}]}), None),
    (_json(EVENT, data={"code": "P0\x00171"}), "nul_in_string"),
    (_json(EVENT, data={"co\x00de": "P0171"}), "nul_in_string"),
    (_json(EVENT, data={"a": [{"b": ["x", "y\x00"]}]}), "nul_in_string"),
    (_json(EVENT, boot_id="b\x00"), "nul_in_string"),
    (_json(EVENT, seq=2**63), "invalid_payload"),
    (_json(EVENT, data={"n": 2**63}), "invalid_payload"),
    (_json(EVENT, data={"n": -(2**63) - 1}), "invalid_payload"),
    (_json(EVENT).replace(b'"P0171"', b"1e400"), "non_finite"),
    (_json(EVENT).replace(b'"P0171"', b"NaN"), "non_finite"),
    (_json(EVENT, ts="1999-12-31T23:59:59Z"), "too_old"),
]


def _validate(topic: str, payload: bytes) -> Any:
    kinds = {"veh-1": "vehicle"}
    return validate(topic, payload, kinds, now=NOW, max_future_skew_s=300, retention_days=RETENTION_DAYS)


@pytest.mark.parametrize(("payload", "reason"), HOSTILE_TELEMETRY)
def test_hostile_telemetry_gets_one_verdict_on_both_paths(payload: bytes, reason: str | None) -> None:
    fast = fast_telemetry(payload)
    try:
        slow: TelemetryPayload | None = TelemetryPayload.model_validate_json(payload)
    except ValidationError:
        slow = None
    if slow is None:
        assert fast is None, "the fast path accepted what the contract refuses"
    elif fast is not None:
        assert (fast.device_id, fast.boot_id, fast.seq) == (slow.device_id, slow.boot_id, slow.seq)
    got = _validate("pw/v1/dev/veh-1/telemetry", payload)
    if reason is None:
        assert isinstance(got, Telemetry), got
    else:
        assert isinstance(got, Quarantined) and got.reason.value == reason, got
        assert "\x00" not in got.detail  # the detail is stored as text


@pytest.mark.parametrize(("payload", "reason"), HOSTILE_EVENTS)
def test_hostile_events_are_refused_by_the_contract_with_a_reason(payload: bytes, reason: str | None) -> None:
    got = _validate("pw/v1/dev/veh-1/event", payload)
    if reason is None:
        EventPayload.model_validate_json(payload)
        assert isinstance(got, Event), got
        return
    if reason != "too_old":  # a clock rule, not the contract's
        with pytest.raises(ValidationError):
            EventPayload.model_validate_json(payload)
    assert isinstance(got, Quarantined) and got.reason.value == reason, got
    assert "\x00" not in got.detail


# -- PostgreSQL refusing what validation let through ------------------------------------------------


def test_writer_quarantines_what_postgres_refuses_and_stores_the_rest(world: World, settings: Settings,
                                                                      conn: Conn) -> None:  # fmt: skip
    world.add_device("imp-w1", "implant")
    world.add_device("veh-w2", "vehicle")
    now = datetime.now(UTC)
    good = [
        _validate_live(settings, *telemetry("imp-w1", seq, [("heart_rate_bpm", 60.0 + seq)]))
        for seq in range(6)
    ]
    good.append(_validate_live(settings, *event("veh-w2", 1, "dtc_set", {"code": "P0420"})))
    # What validation refuses, built by hand: PostgreSQL must refuse them in its own way.
    nul = Event("veh-w2", "b1", 2, now, "dtc_set", {"code": "P0\x00420"})
    huge_seq = Event("veh-w2", "b1", 2**63, now, "dtc_set", {})
    items = [*good[:3], nul, *good[3:5], huge_seq, *good[5:]]
    payloads = [f"raw-{i}".encode() for i in range(len(items))]
    writer = BatchWriter(settings.require_database_url(), quarantine_payload_max_bytes=KEEP)
    try:
        outcome = writer.write(items, payloads)
    finally:
        writer.close()
    assert outcome.messages == len(items) and outcome.quarantined == {"db_rejected": 2}
    assert _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'imp-w1'") == 6
    assert _count(conn, "SELECT count(*) FROM events WHERE device_id = 'veh-w2'") == 1
    rows = conn.execute("SELECT topic, detail, payload FROM quarantine WHERE reason = 'db_rejected' "
                        "ORDER BY quarantine_id").fetchall()  # fmt: skip
    assert [(r["topic"], bytes(r["payload"])) for r in rows] == [
        ("pw/v1/dev/veh-w2/event", b"raw-3"), ("pw/v1/dev/veh-w2/event", b"raw-6")]  # fmt: skip
    assert rows[0]["detail"].startswith(("UntranslatableCharacter", "DataError")), rows[0]["detail"]
    assert rows[1]["detail"].startswith("NumericValueOutOfRange"), rows[1]["detail"]


def _validate_live(settings: Settings, topic: str, payload: bytes) -> Any:
    kinds = {"imp-w1": "implant", "veh-w2": "vehicle"}
    item = validate(topic, payload, kinds, now=datetime.now(UTC), max_future_skew_s=300,
                    retention_days=settings.retention_days)  # fmt: skip
    assert not isinstance(item, Quarantined), item
    return item


def _count(conn: Conn, query: str, *params: Any) -> int:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return int(next(iter(row.values())) or 0)


# -- end to end: hostile devices amid good ones ---------------------------------------------------


@pytest.fixture(scope="module")
def service(settings: Settings) -> Iterator[IngestService]:
    tight = {"device_rate_msgs_per_s": 1.0, "device_burst_msgs": BURST, "quarantine_payload_max_bytes": KEEP,
             "quarantine_rate_limited_kept_per_min": KEPT_PER_MIN}  # fmt: skip
    with running_ingest(settings, "iso", **tight) as svc:
        yield svc


@pytest.fixture(scope="module")
def pub(settings: Settings, service: IngestService) -> Iterator[Publisher]:
    with Publisher(settings.mqtt()) as publisher:
        yield publisher


def _quarantined(conn: Conn, device_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT reason, detail, payload, payload_size, payload_sha256, copies FROM quarantine "
        "WHERE device_id = %s ORDER BY quarantine_id", (device_id,)
    ).fetchall()  # fmt: skip


def _assert_kept_as_prefix(row: dict[str, Any], payload: bytes) -> None:
    assert bytes(row["payload"]) == payload[:KEEP]
    assert row["payload_size"] == len(payload)
    assert bytes(row["payload_sha256"]) == hashlib.sha256(payload).digest()


def test_hostile_devices_amid_good_ones_are_quarantined_and_nothing_else_lost(
    world: World, pub: Publisher, conn: Conn, service: IngestService
) -> None:
    for dev in ("veh-old", "veh-seq", "veh-nul", "veh-big", "veh-good"):
        world.add_device(dev, "vehicle")
    decades_ago = datetime(1996, 3, 1, tzinfo=UTC)
    big_topic, _ = telemetry("veh-big", 1, [("rpm", 800.0)])
    big = b'{"schema": "pulsewire.telemetry/1", "pad": "' + b"x" * (2 * 1024 * 1024 - 4_096) + b'"}'
    hostile: list[tuple[str, Message]] = [
        ("too_old", telemetry("veh-old", 1, [("rpm", 800.0)], ts=decades_ago)),
        ("invalid_payload", telemetry("veh-seq", 2**63, [("rpm", 800.0)])),
        ("nul_in_string", event("veh-nul", 1, "dtc_set", {"code": "P0\x00171", "n\x00": "x"})),
        ("oversized", (big_topic, big)),
    ]
    msgs: list[Message] = []
    for i, (_, message) in enumerate(hostile):
        msgs += [telemetry("veh-good", 10 * i + k, [("rpm", 900.0 + k)]) for k in range(3)]
        msgs.append(message)
    pub.publish_all(msgs)
    wait_for(lambda: _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'veh-good'") == 12, 20,
             "every good reading")  # fmt: skip
    for (reason, (_topic, payload)), dev in zip(
        hostile, ("veh-old", "veh-seq", "veh-nul", "veh-big"), strict=True
    ):
        wait_for(lambda d=dev: len(_quarantined(conn, d)) == 1, 20, f"{dev} quarantined")  # type: ignore[misc]
        row = _quarantined(conn, dev)[0]
        assert row["reason"] == reason, row["detail"]
        _assert_kept_as_prefix(row, payload)
    assert (
        _count(conn, "SELECT count(*) FROM readings WHERE device_id IN ('veh-old', 'veh-seq', 'veh-big')")
        == 0
    )
    assert _count(conn, "SELECT count(*) FROM quarantine WHERE device_id = 'veh-good'") == 0
    assert service.alive


def test_a_flood_beyond_the_budget_is_quarantined_as_rate_limited_not_dropped(
    world: World, pub: Publisher, conn: Conn, service: IngestService, settings: Settings
) -> None:
    """The excess is quarantined: the first payloads of the minute kept, the rest counted on one row."""
    world.add_device("veh-flood", "vehicle")
    world.add_device("veh-calm", "vehicle")
    flood = [telemetry("veh-flood", seq, [("rpm", 1000.0 + seq)]) for seq in range(200)]
    calm = [telemetry("veh-calm", seq, [("rpm", 700.0 + seq)]) for seq in range(10)]
    pub.publish_all([m for pair in zip(flood[::20], calm, strict=True) for m in pair] +
                    [m for i, m in enumerate(flood) if i % 20])  # fmt: skip

    def accounted() -> int:
        stored = _count(conn, "SELECT count(*) FROM ingest_log WHERE device_id = 'veh-flood'")
        return stored + _count(conn, "SELECT sum(copies) FROM quarantine WHERE device_id = 'veh-flood'")

    wait_for(lambda: accounted() == 200, 30, "every flood message stored or quarantined")
    wait_for(lambda: _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'veh-calm'") == 10, 15,
             "every calm reading")  # fmt: skip
    stored = _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'veh-flood'")
    # At most a burst within the window (20 s; the 200 messages take far less), give or take the one
    # or two the sliding window counter admits when a window boundary falls amid the flood.
    assert 1 <= stored <= BURST + 2
    limited = _quarantined(conn, "veh-flood")
    assert {r["reason"] for r in limited} == {"rate_limited"}
    kept = [r for r in limited if r["payload"]]
    counted = [r for r in limited if not r["payload"]]
    # A minute boundary amid the flood gives the device a second minute's allowance.
    assert KEPT_PER_MIN <= len(kept) <= min(2 * KEPT_PER_MIN, 200 - stored)
    assert len(counted) == 1 and "payload not kept" in counted[0]["detail"], counted
    assert counted[0]["copies"] == 200 - stored - len(kept) and counted[0]["payload_size"] > 0
    by_seq = {json.loads(bytes(r["payload"]))["seq"]: r for r in kept}
    for seq, row in by_seq.items():
        _assert_kept_as_prefix(row, flood[seq][1])
    text = service.metrics.text().decode()
    assert f'pulsewire_ingest_quarantined_total{{reason="rate_limited"}} {float(200 - stored)}' in text
    # Replay leaves the counted row alone: it has nothing to send.
    counted_id = _count(
        conn, "SELECT quarantine_id FROM quarantine WHERE device_id = 'veh-flood' AND payload = ''"
    )
    report = replay_quarantine(conn, settings.mqtt(), device_id="veh-flood")
    assert report.truncated == [counted_id] and len(report.replayed) == len(kept)


def _metric(service: IngestService, name: str) -> float:
    """One of the worker's own figures: other workers on other share groups see the same messages."""
    return sample_value(service.metrics.text().decode(), name)


def test_a_throttled_flood_waits_for_the_flush_interval_while_other_devices_go_at_once(
    world: World, settings: Settings
) -> None:
    """A batch of a throttled device's messages only is not committed at once: a flood that used to
    keep the writer committing (one tiny batch after another, hundreds a second) costs a few commits,
    and another device's event amid it is committed without waiting for the interval."""
    world.add_device("veh-storm", "vehicle")
    world.add_device("veh-amid", "vehicle")
    lazy = {"device_rate_msgs_per_s": 1.0, "device_burst_msgs": BURST, "flush_interval_ms": 5_000}
    commits, committed = "pulsewire_ingest_batch_commit_seconds_count", "pulsewire_ingest_batch_messages_sum"
    events = "pulsewire_ingest_events_stored_total"
    with running_ingest(settings, "lazy", **lazy) as service, Publisher(settings.mqtt()) as pub:
        pub.publish_all([telemetry("veh-storm", seq, [("rpm", 900.0)]) for seq in range(BURST + 5)])
        wait_for(lambda: _metric(service, committed) == BURST + 5, 20, "the budget spent")
        before = _metric(service, commits)
        for seq in range(BURST + 5, BURST + 405):  # about 250 messages a second for 1.6 s
            pub.client.publish(*telemetry("veh-storm", seq, [("rpm", 900.0)]), qos=1)
            if seq == BURST + 205:
                pub.client.publish(*event("veh-amid", 0, "dtc_set", {"code": "P0171"}), qos=1)
                amid_sent = time.monotonic()
            time.sleep(0.004)
        # Within the 5 s interval: the event of a device under its budget did not wait for it.
        wait_for(lambda: _metric(service, events) == 1, max(0.1, 4.0 - (time.monotonic() - amid_sent)),
                 "the other device's event")  # fmt: skip
        # A throttle lasts 0.25 s, then one message is read and charged again (an urgent batch):
        # about 7 such commits, and the one of the other device's event. Before, each of the 400
        # messages found the writer idle and was committed 2 ms after it came, in batches of a few.
        assert _metric(service, commits) - before <= 30
        wait_for(lambda: _metric(service, committed) == BURST + 406, 30, "every message committed")


def test_copies_the_broker_sends_again_are_not_charged_to_the_device(
    world: World, settings: Settings
) -> None:
    """After a reconnect the broker sends every unacknowledged message again, flagged DUP. Charged,
    they spent the device's budget (a broker restart sent thousands), and its new messages were
    then quarantined as `rate_limited`."""
    world.add_device("veh-again", "vehicle")
    client_id, received = f"t-again-{secrets.token_hex(3)}", []
    topics = shared_topics("")  # plain subscriptions: the session keeps them for the worker below
    # Another process of this client id took 15 messages and died before acknowledging any.
    consumer = Consumer(settings.mqtt(), client_id, received.append, topics)
    with Publisher(settings.mqtt()) as pub:
        wait_for(lambda: consumer.pump(0.05) is None and consumer.subscribed.is_set(), 15, "subscribed")
        pub.publish_all([telemetry("veh-again", seq, [("rpm", 800.0 + seq)]) for seq in range(15)])
        wait_for(lambda: consumer.pump(0.05) is None and len(received) == 15, 15, "the 15 messages")
        consumer.disconnect()
        assert not any(dup for *_, dup in received)
        budget = {"device_rate_msgs_per_s": 0.1, "device_burst_msgs": BURST}  # 20 in 200 s
        service = IngestService(settings.model_copy(update={"flush_interval_ms": 20, **budget}),
                                client_id=client_id, share_group="")  # fmt: skip
        service.start()
        try:
            assert service.wait_subscribed(15)
            # 15 again (DUP) and 15 new: 30 messages, of which the device is charged for its 15 new.
            pub.publish_all([telemetry("veh-again", seq, [("rpm", 800.0 + seq)]) for seq in range(15, 30)])
            wait_for(lambda: _metric(service, "pulsewire_ingest_batch_messages_sum") == 30, 20, "30 messages")
            # Stored here or by the module's other worker (which sees them too): none quarantined here.
            text = service.metrics.text().decode()
            assert 'pulsewire_ingest_quarantined_total{reason="rate_limited"}' not in text, text
        finally:
            service.stop()
            forget_session(settings, client_id)


# -- replay, retention, reserved ids ----------------------------------------------------------------


def test_replay_after_a_late_registration_stores_once_and_a_second_replay_nothing(
    world: World, pub: Publisher, conn: Conn, *, settings: Settings, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    early = [telemetry("imp-late8", seq, [("heart_rate_bpm", 60.0 + seq)]) for seq in range(3)]
    long_one = telemetry("imp-late8", 9, [("heart_rate_bpm", 70.0)] * 120)  # more than KEEP bytes
    pub.publish_all([*early, long_one])
    wait_for(lambda: len(_quarantined(conn, "imp-late8")) == 4, 15, "unregistered quarantine")
    world.add_device("imp-late8", "implant")
    for var, value in (("DATABASE_URL", settings.require_database_url()), ("MQTT_URL", settings.mqtt_url)):
        monkeypatch.setenv(f"PULSEWIRE_{var}", str(value))
    assert main(["quarantine", "replay", "--device", "imp-late8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["replayed"]["count"], report["truncated"]["count"]) == (3, 1)
    wait_for(lambda: _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'imp-late8'") == 3, 15,
             "the replayed readings")  # fmt: skip
    again = replay_quarantine(conn, settings.mqtt(), device_id="imp-late8")
    assert again.replayed == [] and len(again.truncated) == 1
    # Replayed again by hand anyway (as if marking had failed): ingest_log keeps it at once.
    conn.execute("UPDATE quarantine SET replayed_at = NULL WHERE device_id = 'imp-late8'")
    assert len(replay_quarantine(conn, settings.mqtt(), device_id="imp-late8").replayed) == 3
    pub.publish_all([telemetry("imp-late8", 3, [("heart_rate_bpm", 63.0)])])  # a later batch, as a marker
    wait_for(lambda: _count(conn, "SELECT count(*) FROM ingest_log WHERE device_id = 'imp-late8'") == 4, 15,
             "the marker")  # fmt: skip
    assert _count(conn, "SELECT count(*) FROM readings WHERE device_id = 'imp-late8'") == 4
    assert len(_quarantined(conn, "imp-late8")) == 4  # nothing quarantined anew
    assert main(["quarantine", "list", "--device", "imp-late8", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["truncated"] for r in listed) == [False, False, False, True]


def test_replay_api_is_for_admins_only(clients: dict[str, httpx.Client]) -> None:
    for role in ("provider", "vendor", "owner"):
        assert_error(clients[role].post("/api/v1/quarantine/replay", json={}), 403)
    assert_error(clients["admin"].post("/api/v1/quarantine/replay", json={"reason": "a b"}), 422)
    response = clients["admin"].post("/api/v1/quarantine/replay", json={"device_id": "nobody-here"})
    assert response.status_code == 200, response.text
    assert response.json()["replayed"] == {"count": 0, "ids": []}


def test_maintain_expires_quarantine_by_its_retention(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO quarantine (received_at, topic, reason, payload) VALUES "
        "(now() - interval '31 days', 't/old', 'malformed_json', 'x'),"
        " (now(), 't/new', 'malformed_json', 'y')"
    )
    report = maintain(conn, retention_days=RETENTION_DAYS, quarantine_retention_days=30)
    assert report.expired_quarantine_rows >= 1
    assert _count(conn, "SELECT count(*) FROM quarantine WHERE topic = 't/old'") == 0
    row = conn.execute("SELECT payload_size, payload_sha256 FROM quarantine WHERE topic = 't/new'").fetchone()
    assert row == {"payload_size": 1, "payload_sha256": hashlib.sha256(b"y").digest()}


@pytest.mark.parametrize("device_id", ["pulsewire", "PulseWire", "pulsewire-ingest-host-0", "pulsewire2"])
def test_device_ids_naming_service_logins_are_refused(world: World, conn: Conn, device_id: str) -> None:
    with pytest.raises(RegistryError, match="reserved"):
        registry.add_device(conn, device_id, kind="vehicle", model="m", provider_org_id=world.garage_id,
                            vendor_org_id=world.dongle_vendor_id)  # fmt: skip


def test_the_api_refuses_a_reserved_device_id_with_a_422(
    clients: dict[str, httpx.Client], world: World
) -> None:
    body = {"device_id": "pulsewire", "kind": "vehicle", "model": "m", "provider_org_id": world.garage_id,
            "vendor_org_id": world.dongle_vendor_id}  # fmt: skip
    error = assert_error(clients["admin"].post("/api/v1/devices", json=body), 422)
    assert "reserved" in error["message"]
