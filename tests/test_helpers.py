"""The shared test helpers: `wait_for` surfaces real errors, and `free_port` gives a usable port."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import free_port, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    values: list[object] = [0, None, [], "ready"]
    pending = iter(values)
    assert wait_for(lambda: next(pending), 5, "ready", interval_s=0.001) == "ready"


def test_wait_for_lets_a_real_error_surface_at_once() -> None:
    calls: list[int] = []

    def broken() -> bool:
        calls.append(1)
        raise KeyError("a bug in the test or the code under test")

    with pytest.raises(KeyError):
        wait_for(broken, 30, "anything", ignoring=(ConnectionError,))
    assert len(calls) == 1  # not retried until the timeout


def test_wait_for_retries_only_the_exceptions_it_is_told_to_ignore() -> None:
    failures = iter([ConnectionRefusedError(), ConnectionResetError()])

    def starting() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "up"

    assert wait_for(starting, 5, "the server", interval_s=0.001, ignoring=(ConnectionError,)) == "up"


def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the moon"):
        wait_for(lambda: False, 0.05, "the moon", interval_s=0.01)


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        assert sock.getsockname()[1] == port
