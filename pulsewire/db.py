"""PostgreSQL access: connections and pools, with psycopg errors converted at this boundary."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pulsewire.errors import DatabaseError

# Errors that mean "the server is not there right now": callers retry these with backoff.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)


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


def pool(url: str, *, min_size: int = 1, max_size: int = 10, name: str = "pulsewire") -> ConnectionPool:
    """A connection pool (not yet opened) whose connections return dict rows."""
    return ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"row_factory": dict_row},
        reconnect_timeout=0,
    )


def async_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, name: str = "pulsewire"
) -> AsyncConnectionPool:
    """An async connection pool (not yet opened) whose connections return dict rows."""
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        name=name,
        open=False,
        kwargs={"row_factory": dict_row},
        reconnect_timeout=0,
    )
