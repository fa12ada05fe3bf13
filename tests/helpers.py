"""Waiting on an observable condition with a bounded timeout, and a free loopback port, for every test.

`wait_for` polls a predicate until it returns something truthy and returns that. Only the exception
types named in `ignoring` count as "not yet" (a server still starting refuses connections); any other
exception is a real error and surfaces at once instead of being retried until the timeout.
`serving(httpd)` runs a test's HTTP server in a thread for the length of a `with` block.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import HTTPServer
from typing import TypeVar

from pulsewire.stack._ports import free_port

__all__ = ["free_port", "serving", "wait_for"]

T = TypeVar("T")


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
