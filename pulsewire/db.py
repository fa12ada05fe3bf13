"""PostgreSQL access: connections and pools, with psycopg errors converted at this boundary."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pulsewire.errors import DatabaseError

# Errors that mean "the server is not there right now": callers retry these with backoff.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
# For the session, not one transaction (`is_local` false): the setting outlives the commit.
_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[dict[str, object]]:
    """A new connection that returns rows as dicts, or DatabaseError."""
    try:
        return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc


@contextmanager
def transaction(url: str) -> Iterator[psycopg.Connection[dict[str, object]]]:
    """A connection inside one transaction: committed on success, rolled back on error."""
    with connect(url) as conn, conn.transaction():
        yield conn


def pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "pulsewire",
    statement_timeout_ms: int | None = None,
) -> ConnectionPool:
    """A connection pool (not yet opened) whose connections return dict rows.

    With `statement_timeout_ms`, PostgreSQL cancels any statement of these connections that runs
    longer (`psycopg.errors.QueryCanceled`).
    """

    def configure(conn: psycopg.Connection[Any]) -> None:
        conn.execute(_SET_TIMEOUT, (f"{statement_timeout_ms}ms",))
        conn.commit()  # the pool wants its connections idle, not inside a transaction

    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"row_factory": dict_row},
        configure=configure if statement_timeout_ms is not None else None,
        reconnect_timeout=0,
    )


def async_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "pulsewire",
    statement_timeout_ms: int | None = None,
) -> AsyncConnectionPool:
    """An async connection pool (not yet opened) whose connections return dict rows.

    `statement_timeout_ms` as for `pool`.
    """

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(_SET_TIMEOUT, (f"{statement_timeout_ms}ms",))
        await conn.commit()

    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"row_factory": dict_row},
        configure=configure if statement_timeout_ms is not None else None,
        reconnect_timeout=0,
    )


def text_array(values: Iterable[str]) -> str:
    """A text[] literal, sent as one parameter: psycopg's list dumper costs about 1 us an element."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def int_array(values: Iterable[int]) -> str:
    """A bigint[]/int[] literal, sent as one parameter."""
    return "{" + ",".join(map(str, values)) + "}"
