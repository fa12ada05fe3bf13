"""Silence (absence rules) judged by the clock tick: in event time, but not while an upload is under
way, and never for a decommissioned device. Messages go through ingest's validation and writer, so
the device's contact and status are recorded as ingest records them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ingest.validate import validate
from ingest.writer import BatchWriter
from pulsewire import registry
from relay.engine import EngineConfig
from relay.tick import check_silences
from schemas.payloads import QuarantineReason
from tests.fix_db import World
from tests.ingest_support import Message, status, telemetry
from tests.relay_support import alerts_of, commit_batch, evaluate

Conn = psycopg.Connection[dict[str, Any]]
CFG = EngineConfig()
DAY = timedelta(days=1)


pytestmark = pytest.mark.usefixtures("default_rules")


@pytest.fixture
def writer(db_url: str) -> Iterator[BatchWriter]:
    w = BatchWriter(db_url)
    yield w
    w.close()


def ingest(writer: BatchWriter, messages: Sequence[Message]) -> None:
    """Validate and commit `messages` in one batch, as an ingest worker does."""
    kinds, now = writer.load_kinds(), datetime.now(UTC)
    items = [validate(t, p, kinds, now=now, max_future_skew_s=300, retention_days=30) for t, p in messages]
    writer.write(items, [p for _, p in messages])


def registered_days_ago(conn: Conn, world: World, device_id: str, days: int, kind: str = "implant") -> None:
    world.add_device(device_id, kind)
    conn.execute(
        "UPDATE devices SET created_at = now() - make_interval(days => %s) WHERE device_id = %s",
        (days, device_id),
    )


def absence_alerts(conn: Conn, device_id: str) -> list[dict[str, Any]]:
    return [a for a in alerts_of(conn, device_id) if a["rule_key"] == "implant.monitor_silent"]


def tick(conn: Conn, device_id: str) -> list[int]:
    """One silence check; the ids of the alerts it opened for `device_id` (other tests' devices aside)."""
    opened = check_silences(conn, CFG)
    return [a["alert_id"] for a in absence_alerts(conn, device_id) if a["alert_id"] in opened]


def test_a_backlog_upload_with_a_tick_in_the_middle_raises_no_silence_alert(
    conn: Conn, world: World, db_url: str, writer: BatchWriter
) -> None:
    registered_days_ago(conn, world, "icd-backlog", 5)
    assert tick(conn, "icd-backlog"), "four days unplugged: silent beyond 1.5 x its day"
    # The monitor is plugged in again and uploads the four days it kept, oldest first.
    now = datetime.now(UTC)
    stamps = [now - 4 * DAY + i * timedelta(hours=2) for i in range(48)]
    backlog = [telemetry("icd-backlog", i, [("heart_rate_bpm", 62.0)], ts=ts) for i, ts in enumerate(stamps)]
    ingest(writer, [status("icd-backlog", "online", now), *backlog[:24]])
    evaluate(db_url)
    [alert] = absence_alerts(conn, "icd-backlog")
    assert alert["state"] == "resolved"  # data came in: the silence is over
    # Mid-upload the newest data is two days old; the device is talking to us all the same.
    assert tick(conn, "icd-backlog") == []
    ingest(writer, backlog[24:])
    assert tick(conn, "icd-backlog") == []  # committed, not evaluated yet
    evaluate(db_url)
    ingest(writer, [status("icd-backlog", "offline", datetime.now(UTC))])
    assert tick(conn, "icd-backlog") == []
    assert absence_alerts(conn, "icd-backlog") == [alert]


def test_a_device_that_went_offline_is_judged_from_its_newest_data(
    conn: Conn, world: World, db_url: str, writer: BatchWriter
) -> None:
    """The monitor lost power mid-upload (the Will says offline): nothing newer than two days is coming."""
    registered_days_ago(conn, world, "icd-unplugged", 5)
    now = datetime.now(UTC)
    ingest(writer, [status("icd-unplugged", "online", now),
                    telemetry("icd-unplugged", 1, [("heart_rate_bpm", 61.0)], ts=now - 2 * DAY)])  # fmt: skip
    evaluate(db_url)
    assert tick(conn, "icd-unplugged") == []  # in contact a moment ago
    ingest(writer, [status("icd-unplugged", "offline", datetime.now(UTC))])
    opened = tick(conn, "icd-unplugged")
    assert [a["alert_id"] for a in absence_alerts(conn, "icd-unplugged")] == opened != []


def test_committed_data_not_evaluated_yet_holds_the_judgement(conn: Conn, world: World, db_url: str) -> None:
    registered_days_ago(conn, world, "icd-queued", 5)
    commit_batch(conn, "icd-queued", [(datetime.now(UTC) - 3 * DAY, "heart_rate_bpm", 60.0)])
    assert tick(conn, "icd-queued") == []
    evaluate(db_url)
    assert len(tick(conn, "icd-queued")) == 1  # three days old, and nothing more in sight


def test_a_decommissioned_device_is_never_silent(conn: Conn, world: World) -> None:
    registered_days_ago(conn, world, "icd-retired", 3)
    registered_days_ago(conn, world, "icd-in-service", 3)
    registry.decommission_device(conn, "icd-retired")
    assert len(tick(conn, "icd-in-service")) == 1
    assert absence_alerts(conn, "icd-retired") == []


def test_ingest_treats_a_decommissioned_device_as_unknown(
    conn: Conn, world: World, writer: BatchWriter
) -> None:
    world.add_device("icd-gone")
    registry.decommission_device(conn, "icd-gone")
    assert "icd-gone" not in writer.load_kinds()
    ingest(writer, [telemetry("icd-gone", 1, [("heart_rate_bpm", 60.0)])])
    [row] = conn.execute("SELECT reason FROM quarantine WHERE device_id = 'icd-gone'").fetchall()
    assert row["reason"] == QuarantineReason.UNREGISTERED_DEVICE.value
    assert conn.execute("SELECT 1 FROM readings WHERE device_id = 'icd-gone'").fetchall() == []
