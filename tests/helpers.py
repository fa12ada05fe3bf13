"""Waiting on an observable condition with a bounded timeout, and a free loopback port, for every test.

`wait_for` polls a predicate until it returns something truthy and returns that. Only the exception
types named in `ignoring` count as "not yet" (a server still starting refuses connections); any other
exception is a real error and surfaces at once instead of being retried until the timeout.
`serving(httpd)` runs a test's HTTP server in a thread for the length of a `with` block.
`round_trips(conn, work)` counts the times `work` waited for PostgreSQL on `conn`, `statements` the
statements it ran there. `plan_sum(plan, count)` adds up `count(node)` over a JSON EXPLAIN plan.
"""

from __future__ import annotations

import itertools
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import HTTPServer
from typing import Any, TypeVar

import psycopg

from pulsewire.stack._ports import free_port

__all__ = ["free_port", "plan_sum", "round_trips", "serving", "statements", "wait_for"]

T = TypeVar("T")
_MESSAGE = re.compile(r"^\d{4}-\d\d-\d\d [\d:.]+\t([FB])\t\d+\t(\w+)", re.MULTILINE)


def wait_for(
    predicate: Callable[[], T],
    timeout_s: float = 10.0,
    what: str = "condition",
    *,
    interval_s: float = 0.05,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """The first truthy value of `predicate()`; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = predicate()
        except ignoring:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@contextmanager
def serving(httpd: HTTPServer) -> Iterator[HTTPServer]:
    """Serve `httpd` from a daemon thread inside the block; shut down and closed after it."""
    thread = threading.Thread(target=httpd.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def round_trips(conn: psycopg.Connection[Any], work: Callable[[], object]) -> int:
    """How many times `work` waited for the server on `conn`, from libpq's protocol trace.

    Each time the client stops sending (F, frontend messages) and the server answers (B, backend)
    is one round trip, whatever the messages: a simple Query, a pipeline's Sync or Flush.
    """
    sides = [side for side, _type in _messages(conn, work)]
    return sum(1 for pair in itertools.pairwise(sides) if pair == ("F", "B"))


def statements(conn: psycopg.Connection[Any], work: Callable[[], object]) -> int:
    """How many statements `work` ran on `conn`: each simple Query or extended-protocol Bind sent."""
    return sum(1 for side, kind in _messages(conn, work) if side == "F" and kind in ("Query", "Bind"))


def _messages(conn: psycopg.Connection[Any], work: Callable[[], object]) -> list[tuple[str, str]]:
    """(side, message type) of every protocol message while `work` runs: F frontend, B backend."""
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        try:
            work()
        finally:
            conn.pgconn.untrace()
        trace.seek(0)
        # A message is a line "<timestamp>\t<F|B>\t<length>\t<type>..."; query texts may add lines.
        return [(m.group(1), m.group(2)) for m in _MESSAGE.finditer(trace.read())]


def plan_sum(plan: dict[str, Any], count: Callable[[dict[str, Any]], float]) -> float:
    """`count(node)` summed over every node of a JSON `EXPLAIN ANALYZE` plan, children included."""
    return count(plan) + sum(plan_sum(child, count) for child in plan.get("Plans", []))
