"""Versioned SQL migrations from `schemas/migrations`, applied once each, in order.

A file is `NNNN_name.sql` (every database), or `NNNN_name.native.sql` / `NNNN_name.timescale.sql`
(only the variant matching the storage chosen at the first migration). A file whose first line is
`-- pulsewire:no-transaction` runs outside a transaction (TimescaleDB continuous aggregates need it).
The storage is chosen once, at the first migration, by `PULSEWIRE_STORAGE`: `timescale` (refused
clearly when the extension cannot be created), `native` (the extension is never created), or `auto`
(TimescaleDB when `CREATE EXTENSION timescaledb` succeeds, else native partitioning). Callers rarely
branch on it; they call `pw_bucket`, read `readings`, and read hourly rollups through
`pulsewire.rollups`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import psycopg

from pulsewire.db import connect
from pulsewire.errors import ConfigError, DatabaseError

Storage = Literal["native", "timescale"]
StorageChoice = Literal["auto", "native", "timescale"]
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<variant>native|timescale))?\.sql$")
_NO_TX = "-- pulsewire:no-transaction"
_LOCK_KEY = 0x5057_4D49  # advisory lock: one migrator at a time


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    variant: Storage | None
    sql: str

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(_NO_TX)


def available_migrations() -> list[Migration]:
    """Every migration file shipped in `schemas/migrations`, sorted by version."""
    found = []
    for entry in resources.files("schemas").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            variant = match["variant"]
            found.append(Migration(match["version"], match["name"], variant, entry.read_text()))  # type: ignore[arg-type]
    return sorted(found, key=lambda m: (m.version, m.variant or ""))


def migrate(url: str, storage: StorageChoice = "auto") -> list[str]:
    """Apply pending migrations; returns the versions applied (empty when up to date).

    `storage` is honoured on a new database; on a migrated one it must be `auto` or the storage it has
    (ConfigError otherwise: the storage of existing data is not switched by a setting).
    """
    try:
        with connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                return _apply_pending(conn, storage)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.Error as exc:
        raise DatabaseError(f"migration failed: {exc}") from exc


def storage_of(conn: psycopg.Connection[dict[str, object]]) -> Storage:
    """The storage this database was migrated with."""
    row = conn.execute("SELECT value FROM pulsewire_meta WHERE key = 'storage'").fetchone()
    if row is None:
        raise DatabaseError("database is not migrated: run `pulsewire migrate`")
    return "timescale" if row["value"] == "timescale" else "native"


def _apply_pending(conn: psycopg.Connection[dict[str, object]], wanted: StorageChoice) -> list[str]:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version text PRIMARY KEY, name text NOT NULL, variant text,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
    storage = _choose_storage(conn, wanted) if not done else _recorded_storage(conn)
    if wanted not in ("auto", storage):
        raise ConfigError(
            f"PULSEWIRE_STORAGE={wanted}, but this database was migrated with {storage} storage; "
            "the storage of a database is chosen at its first migration"
        )
    applied: list[str] = []
    for migration in available_migrations():
        if migration.version in done or migration.variant not in (None, storage):
            continue
        _apply(conn, migration)
        done.add(migration.version)
        applied.append(migration.version)
    return applied


def _apply(conn: psycopg.Connection[dict[str, object]], migration: Migration) -> None:
    record = "INSERT INTO schema_migrations (version, name, variant) VALUES (%s, %s, %s)"
    params = (migration.version, migration.name, migration.variant)
    if migration.transactional:
        with conn.transaction():
            conn.execute(migration.sql.encode())
            conn.execute(record, params)
    else:
        for statement in _split_statements(migration.sql):
            conn.execute(statement.encode())
        conn.execute(record, params)


def _split_statements(sql: str) -> list[str]:
    # Only for no-transaction files, which hold plain statements without semicolons in strings.
    return [s.strip() for s in sql.split(";") if s.strip() and not _only_comments(s)]


def _only_comments(chunk: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in chunk.splitlines())


def _choose_storage(conn: psycopg.Connection[dict[str, object]], wanted: StorageChoice) -> Storage:
    if wanted == "native":
        return "native"
    available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone()
    if available is None:
        if wanted == "timescale":
            raise ConfigError(
                "PULSEWIRE_STORAGE=timescale, but this PostgreSQL has no timescaledb extension installed"
            )
        return "native"
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        if wanted == "timescale":
            raise ConfigError(
                "PULSEWIRE_STORAGE=timescale, but the timescaledb extension cannot be created "
                f"(is it in shared_preload_libraries?): {str(exc).splitlines()[0]}"
            ) from exc
        # Installed but not preloaded (shared_preload_libraries): plain PostgreSQL still works.
        return "native"
    return "timescale"


def _recorded_storage(conn: psycopg.Connection[dict[str, object]]) -> Storage:
    row = conn.execute(
        "SELECT variant FROM schema_migrations WHERE variant IS NOT NULL ORDER BY version LIMIT 1"
    ).fetchone()
    return "timescale" if row is not None and row["variant"] == "timescale" else "native"
