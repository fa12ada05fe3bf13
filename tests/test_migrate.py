"""Migrations and storage housekeeping, on native storage and (where installed) on TimescaleDB."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from pulsewire.errors import ConfigError
from pulsewire.migrate import Storage, available_migrations, migrate, storage_of
from pulsewire.stack import StackInfo
from pulsewire.storage import list_partitions, maintain
from tests.fix_db import database_url_for, installed_storages

Conn = psycopg.Connection[dict[str, Any]]
both = pytest.mark.storage("native", "timescale")


@both
def test_migrations_run_twice_are_a_no_op(db_url: str, conn: Conn, storage: Storage) -> None:
    before = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
    assert migrate(db_url) == [] and migrate(db_url, storage) == []
    after = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY version").fetchall()
    assert before == after
    shipped = {m.version for m in available_migrations() if m.variant in (None, storage)}
    assert {r["version"] for r in after} == shipped
    assert storage_of(conn) == storage


@pytest.fixture
def fresh_url(stack_info: StackInfo) -> Iterator[str]:
    """An empty database (no migration yet)."""
    dbname = f"t_fresh_{secrets.token_hex(3)}"
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"'.encode())
    yield database_url_for(stack_info, dbname)
    with psycopg.connect(stack_info.database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'.encode())


def test_native_storage_never_creates_the_extension(fresh_url: str) -> None:
    migrate(fresh_url, "native")
    with psycopg.connect(fresh_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        assert storage_of(conn) == "native"
        assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None


def test_timescale_storage_is_created_or_refused_clearly(fresh_url: str) -> None:
    if "timescale" in installed_storages():
        migrate(fresh_url, "timescale")
        with psycopg.connect(fresh_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
            assert storage_of(conn) == "timescale"
    else:
        with pytest.raises(ConfigError, match="no timescaledb extension installed"):
            migrate(fresh_url, "timescale")


@pytest.mark.storage("native")
def test_a_migrated_database_keeps_its_storage(db_url: str) -> None:
    with pytest.raises(ConfigError, match="migrated with native storage"):
        migrate(db_url, "timescale")


@pytest.mark.storage("native")
def test_plain_postgres_gets_native_partitioning(conn: Conn) -> None:
    assert storage_of(conn) == "native"
    row = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings'").fetchone()
    assert row is not None and row["relkind"] == "p"  # partitioned table


@both
def test_pw_bucket_matches_date_bin_origin(conn: Conn) -> None:
    row = conn.execute(
        "SELECT pw_bucket(INTERVAL '15 minutes', timestamptz '2026-11-22 03:07:59+00') AS b"
    ).fetchone()
    assert row is not None and row["b"] == datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def _insert(conn: Conn, ts: datetime, value: float) -> None:
    conn.execute(
        "INSERT INTO readings (ts, device_id, metric, value) VALUES (%s, 'd1', 'rpm', %s)", (ts, value)
    )


@pytest.mark.storage("native")
def test_partitions_are_created_ahead_and_dropped_by_retention(conn: Conn) -> None:
    first = maintain(conn, retention_days=30, now=datetime(2026, 1, 10, 12, tzinfo=UTC))
    assert "readings_p20260103" in first.created and "readings_p20260117" in first.created
    assert "events_p20260110" in first.created
    _insert(conn, datetime(2026, 1, 5, 8, tzinfo=UTC), 1.0)  # its own day partition
    _insert(conn, datetime(2025, 11, 1, 8, tzinfo=UTC), 2.0)  # older than any partition: default
    _insert(conn, datetime(2026, 2, 25, 8, tzinfo=UTC), 3.0)  # no partition yet: default
    row = conn.execute("SELECT count(*) AS n FROM readings_default").fetchone()
    assert row is not None and row["n"] == 2

    again = maintain(conn, retention_days=30, now=datetime(2026, 1, 10, 12, tzinfo=UTC))
    assert again.created == [] and again.dropped == []
    assert again.expired_default_rows == 1  # the November row is past retention

    later = maintain(conn, retention_days=30, now=datetime(2026, 3, 1, tzinfo=UTC))
    assert "readings_p20260105" in later.dropped and "readings_p20260117" in later.dropped
    assert "readings_p20260301" in later.created
    assert "readings_p20260225" not in later.created  # the default partition holds that day's rows
    values = [r["value"] for r in conn.execute("SELECT value FROM readings ORDER BY ts")]
    assert values == [3.0]
    assert all(name >= "readings_p20260222" for name in list_partitions(conn, "readings"))


@pytest.mark.storage("timescale")
def test_timescale_path_uses_hypertables_and_policies(conn: Conn) -> None:
    assert storage_of(conn) == "timescale"
    tables = {
        r["hypertable_name"]
        for r in conn.execute("SELECT hypertable_name FROM timescaledb_information.hypertables")
    }
    assert {"readings", "events"} <= tables
    jobs = {r["proc_name"] for r in conn.execute("SELECT proc_name FROM timescaledb_information.jobs")}
    assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= jobs
    row = conn.execute(
        "SELECT materialized_only FROM timescaledb_information.continuous_aggregates"
        " WHERE view_name = 'readings_1h'"
    ).fetchone()
    assert row is not None and row["materialized_only"] is False  # real-time aggregation


@both
def test_quarantine_copies_already_stored_fold_into_their_first_row(db_url: str, conn: Conn) -> None:
    """0035 on a database that quarantined a redelivered message twice: one waiting row, two copies."""
    conn.execute("DROP INDEX quarantine_pending_message")
    conn.execute("ALTER TABLE quarantine DROP COLUMN copies, DROP COLUMN last_received_at")
    conn.execute("DELETE FROM schema_migrations WHERE version = '0035'")
    columns = "topic, reason, payload, received_at, replayed_at"
    insert = f"INSERT INTO quarantine ({columns}) VALUES (%s, %s, %s, %s, %s)"
    t1, t2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    for topic, payload, at, replayed in [
        ("pw/v1/dev/a/telemetry", b"{", t1, None),
        ("pw/v1/dev/a/telemetry", b"{", t2, None),  # the redelivery
        ("pw/v1/dev/a/telemetry", b"{", t1, t1),  # replayed already: stays its own row
        ("pw/v1/dev/b/telemetry", b"{", t1, None),  # another topic
    ]:
        conn.execute(insert, (topic, "malformed_json", payload, at, replayed))
    assert migrate(db_url) == ["0035"]
    rows = conn.execute(
        "SELECT topic, copies, last_received_at, replayed_at IS NOT NULL AS replayed FROM quarantine"
        " ORDER BY quarantine_id"
    ).fetchall()
    assert [tuple(r.values()) for r in rows] == [
        ("pw/v1/dev/a/telemetry", 2, t2, False),
        ("pw/v1/dev/a/telemetry", 1, None, True),
        ("pw/v1/dev/b/telemetry", 1, None, False),
    ]
