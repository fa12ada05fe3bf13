"""PostgreSQL access: connections and pools, with psycopg errors converted at this boundary."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from pulsewire.errors import DatabaseError, InvalidInput, PulsewireError, QueryTimeout

# Errors that mean "the server is not there right now": callers reconnect and retry with backoff.
# A read-only refusal is a connection left on a node that is no longer the primary after a
# failover; a new connection (multi-host URL, target_session_attrs=read-write) finds the new one.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
)
# For the session, not one transaction (`is_local` false): the setting outlives the commit.
_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, false)"


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection[dict[str, object]]:
    """A new connection that returns rows as dicts, or DatabaseError."""
    try:
        return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {exc}") from exc


@contextmanager
def pipelined(conn: psycopg.Connection[Any], begin: str = "BEGIN") -> Iterator[None]:
    """One transaction whose BEGIN travels with its first statements and COMMIT with its last.

    psycopg's `transaction()` costs a round trip for BEGIN and another for COMMIT (in pipeline mode
    too: it waits for the BEGIN's answer). Here `conn` (in autocommit, idle) is put in pipeline
    mode and BEGIN queued before the block's statements, COMMIT after them: a transaction that reads
    once and writes once costs two round trips, not four. A read inside the block (`fetchone`)
    sends what is queued and waits, as in any pipeline. Whatever the block raises rolls back.
    Savepoints (`conn.transaction()` inside the block) work as usual.
    """
    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise psycopg.ProgrammingError("pipelined() needs an idle connection in autocommit")
    try:
        with conn.pipeline():
            conn.execute(begin)
            yield
            conn.execute("COMMIT")
    except BaseException:
        # Ends the transaction (and an aborted pipeline) whatever its state; a connection too broken
        # to roll back is the caller's to find, and the block's own error is the one raised.
        with suppress(psycopg.Error):
            conn.rollback()
        raise


def converted(exc: psycopg.Error | PoolTimeout) -> PulsewireError | None:
    """The Pulsewire error a driver error stands for; None for a bug (bad SQL), which stays one.

    A value PostgreSQL refused is the input's fault (`InvalidInput`); a cancelled statement is a
    `QueryTimeout`; a server or pool that does not answer is a `DatabaseError`, whose text (hosts,
    ports, users) is for the log only.
    """
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return QueryTimeout("the statement ran past the statement timeout and was cancelled")
    if isinstance(exc, psycopg.DataError):
        return InvalidInput(f"invalid value: {str(exc).splitlines()[0]}")
    if isinstance(exc, psycopg.IntegrityError):
        # A reference or constraint the caller's code did not check itself.
        return InvalidInput(str(exc).splitlines()[0], code="constraint_violation")
    if isinstance(exc, (*TRANSIENT_ERRORS, PoolTimeout)):
        return DatabaseError(f"database unavailable: {exc}")
    return None


@contextmanager
def errors_converted() -> Iterator[None]:
    """Re-raise driver errors from the block as `converted` says (`from` the original)."""
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        if (error := converted(exc)) is None:
            raise
        raise error from exc


# Pool checks running in the background (a reference keeps each task alive until it ends).
_checks: set[asyncio.Task[None]] = set()


def _stranded(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], exc: Exception) -> bool:
    """Whether `conn` lost its server or sits on a node that no longer takes writes (not a timeout)."""
    return conn.broken or isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)


def _check_later(pool: AsyncConnectionPool[Any]) -> None:
    """Test the pool's idle connections in the background and replace the broken ones.

    One failed borrow means the server (or the primary) went away under every idle connection: after
    a failover they all point at the dead or demoted node. Checking them at once costs one failed
    request per failover instead of one per pooled connection.
    """
    task = asyncio.get_running_loop().create_task(pool.check())
    _checks.add(task)
    task.add_done_callback(_checks.discard)


@asynccontextmanager
async def borrowed(pool: AsyncConnectionPool[Any], timeout_s: float) -> AsyncIterator[Any]:
    """A pooled connection for the block; driver errors raised in it come out converted."""
    with errors_converted():
        async with pool.connection(timeout=timeout_s) as conn:
            try:
                yield conn
            except TRANSIENT_ERRORS as exc:
                if _stranded(conn, exc):
                    await conn.close()  # a closed connection is dropped by the pool, not lent again
                    _check_later(pool)
                raise


@contextmanager
def borrowed_sync(pool: ConnectionPool[Any]) -> Iterator[Any]:
    """The same for a synchronous pool (worker threads of the dashboard), checked by a thread."""
    with errors_converted(), pool.connection() as conn:
        try:
            yield conn
        except TRANSIENT_ERRORS as exc:
            if _stranded(conn, exc):
                conn.close()
                threading.Thread(target=pool.check, name=f"{pool.name}-check", daemon=True).start()
            raise


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
    values = values if isinstance(values, list | tuple) else list(values)
    if not values:
        return "{}"
    joined = "".join(values)
    if '"' not in joined and "\\" not in joined:  # ids and names: nothing to escape, one join
        return '{"' + '","'.join(values) + '"}'
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values) + "}"


def int_array(values: Iterable[int]) -> str:
    """A bigint[]/int[] literal, sent as one parameter."""
    return "{" + ",".join(map(str, values)) + "}"
