"""Time-series housekeeping: partitions ahead, retention behind, hourly rollups brought up to date.

On TimescaleDB the policies added by the migration do this work (compression, retention, the
continuous aggregate's refresh). On plain PostgreSQL `readings` and `events` are partitioned by
day: `maintain` creates the partitions for the days around now, drops the ones retention has
passed, refreshes the hourly rollups (`pulsewire.rollups`) and expires theirs. Either way it deletes
quarantine rows older than their own retention. Ingest runs it at start and then hourly, so a
long-running system never writes into a missing day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from pulsewire import rollups
from pulsewire.migrate import storage_of

PARTITIONED_TABLES = ("readings", "events")
DAYS_AHEAD = 7
DAYS_BEHIND = 7
QUARANTINE_PURGE_ROWS = 10_000  # rows deleted a statement: short transactions, no long lock


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    expired_default_rows: int = 0
    expired_quarantine_rows: int = 0
    expired_rollup_rows: int = 0


def maintain(
    conn: psycopg.Connection[dict[str, object]],
    *,
    retention_days: int,
    quarantine_retention_days: int | None = None,
    now: datetime | None = None,
) -> MaintenanceReport:
    """Create partitions around `now` and apply retention (quarantine's too, when given); idempotent."""
    now = now or datetime.now(UTC)
    report = MaintenanceReport()
    if quarantine_retention_days is not None:
        report.expired_quarantine_rows = purge_quarantine(
            conn, now - timedelta(days=quarantine_retention_days)
        )
    if storage_of(conn) == "timescale":
        return report
    cutoff = now - timedelta(days=retention_days)
    for table in PARTITIONED_TABLES:
        with conn.transaction():
            _create_partitions(conn, table, now.date(), cutoff.date(), report)
            _drop_expired(conn, table, cutoff, report)
    rollups.refresh(conn, now=now)
    report.expired_rollup_rows = rollups.expire(conn, cutoff)
    return report


def purge_quarantine(conn: psycopg.Connection[dict[str, object]], cutoff: datetime) -> int:
    """Delete quarantine rows received before `cutoff`, a bounded chunk a statement; returns how many."""
    total = 0
    while True:
        with conn.transaction():
            cur = conn.execute(
                """DELETE FROM quarantine WHERE quarantine_id IN (
                     SELECT quarantine_id FROM quarantine WHERE received_at < %s LIMIT %s)""",
                (cutoff, QUARANTINE_PURGE_ROWS),
            )
        total += max(cur.rowcount, 0)
        if cur.rowcount < QUARANTINE_PURGE_ROWS:
            return total


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def list_partitions(conn: psycopg.Connection[dict[str, object]], table: str) -> list[str]:
    """The day partitions of `table`, oldest first (the default partition is not listed)."""
    rows = conn.execute(
        """SELECT c.relname AS name FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
           WHERE p.relname = %s AND c.relname <> %s ORDER BY c.relname""",
        (table, f"{table}_default"),
    ).fetchall()
    return [str(r["name"]) for r in rows]


def _create_partitions(
    conn: psycopg.Connection[dict[str, object]],
    table: str,
    today: date,
    oldest: date,
    report: MaintenanceReport,
) -> None:
    existing = set(list_partitions(conn, table))
    first = max(today - timedelta(days=DAYS_BEHIND), oldest + timedelta(days=1))
    day = first
    while day <= today + timedelta(days=DAYS_AHEAD):
        name = partition_name(table, day)
        if name not in existing and not _default_holds(conn, table, day):
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(name),
                    sql.Identifier(table),
                    sql.Literal(f"{day.isoformat()} 00:00:00+00"),
                    sql.Literal(f"{(day + timedelta(days=1)).isoformat()} 00:00:00+00"),
                )
            )
            report.created.append(name)
        day += timedelta(days=1)


def _default_holds(conn: psycopg.Connection[dict[str, object]], table: str, day: date) -> bool:
    # A day that already has rows in the default partition cannot get its own partition;
    # those rows stay where they are (they are old data, and retention still reaches them).
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    row = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE ts >= %s AND ts < %s) AS held").format(
            sql.Identifier(f"{table}_default")
        ),
        (start, start + timedelta(days=1)),
    ).fetchone()
    return bool(row and row["held"])


def _drop_expired(
    conn: psycopg.Connection[dict[str, object]], table: str, cutoff: datetime, report: MaintenanceReport
) -> None:
    for name in list_partitions(conn, table):
        day = datetime.strptime(name.rsplit("_p", 1)[1], "%Y%m%d").replace(tzinfo=UTC)
        if day + timedelta(days=1) <= cutoff:
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            report.dropped.append(name)
    cur = conn.execute(
        sql.SQL("DELETE FROM {} WHERE ts < %s").format(sql.Identifier(f"{table}_default")), (cutoff,)
    )
    report.expired_default_rows += max(cur.rowcount, 0)
