"""`pulsewire.db.pipelined`: a transaction whose BEGIN and COMMIT cost no round trip of their own.

Round trips are counted from libpq's protocol trace (`tests.helpers.round_trips`).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pulsewire.db import connect, pipelined
from tests.helpers import round_trips

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def table(conn: Conn) -> str:
    conn.execute("CREATE TABLE IF NOT EXISTS pipelined_t (n int PRIMARY KEY)")
    conn.execute("TRUNCATE pipelined_t")
    return "pipelined_t"


def test_a_read_and_a_write_cost_two_round_trips_against_four(db_url: str, table: str) -> None:
    with connect(db_url, autocommit=True) as c:

        def plain() -> None:
            with c.transaction():
                c.execute("SELECT count(*) AS n FROM pipelined_t").fetchone()
                c.execute("INSERT INTO pipelined_t VALUES (1)")

        def piped() -> None:
            with pipelined(c):
                c.execute("SELECT count(*) AS n FROM pipelined_t").fetchone()
                c.execute("INSERT INTO pipelined_t VALUES (2)")

        assert round_trips(c, plain) == 4  # BEGIN, the read, the write, COMMIT
        assert round_trips(c, piped) == 2  # BEGIN with the read, the write with COMMIT
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert [r["n"] for r in c.execute("SELECT n FROM pipelined_t ORDER BY n")] == [1, 2]


def test_the_isolation_level_is_the_begin_statements(db_url: str) -> None:
    with connect(db_url, autocommit=True) as c, pipelined(c, "BEGIN ISOLATION LEVEL REPEATABLE READ"):
        row = c.execute("SELECT current_setting('transaction_isolation') AS level").fetchone()
        assert row == {"level": "repeatable read"}


def test_an_exception_in_the_block_rolls_back_and_leaves_the_connection_usable(
    db_url: str, table: str
) -> None:
    with connect(db_url, autocommit=True) as c:
        with pytest.raises(ZeroDivisionError), pipelined(c):
            c.execute("INSERT INTO pipelined_t VALUES (1)")
            c.execute("SELECT 1").fetchone()
            _ = 1 / 0
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert c.execute("SELECT count(*) AS n FROM pipelined_t").fetchone() == {"n": 0}


def test_a_failing_queued_write_fails_the_commit_and_nothing_lands(db_url: str, table: str) -> None:
    """A write nobody reads the answer of fails at the COMMIT's sync: the block's writes are undone."""
    with connect(db_url, autocommit=True) as c:
        with pytest.raises(psycopg.errors.UniqueViolation), pipelined(c):
            c.execute("INSERT INTO pipelined_t VALUES (1)")
            c.execute("INSERT INTO pipelined_t VALUES (1)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert c.execute("SELECT count(*) AS n FROM pipelined_t").fetchone() == {"n": 0}
        with pipelined(c):  # and the next transaction goes through
            c.execute("INSERT INTO pipelined_t VALUES (1)")
        assert c.execute("SELECT count(*) AS n FROM pipelined_t").fetchone() == {"n": 1}


def test_a_savepoint_inside_undoes_only_its_own_writes(db_url: str, table: str) -> None:
    with connect(db_url, autocommit=True) as c:
        with pipelined(c):
            c.execute("INSERT INTO pipelined_t VALUES (1)")
            with pytest.raises(psycopg.errors.UniqueViolation), c.transaction():
                c.execute("INSERT INTO pipelined_t VALUES (2)")
                c.execute("INSERT INTO pipelined_t VALUES (1)").fetchone()
            c.execute("INSERT INTO pipelined_t VALUES (3)")
        assert [r["n"] for r in c.execute("SELECT n FROM pipelined_t ORDER BY n")] == [1, 3]


def test_refused_on_a_connection_that_manages_its_own_transactions(db_url: str) -> None:
    with connect(db_url) as c, pytest.raises(psycopg.ProgrammingError), pipelined(c):
        pass
