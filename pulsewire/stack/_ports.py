"""Loopback ports: finding a free one and waiting for a server to listen."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    """Whether a TCP connection to `host:port` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout_s: float, still_starting: Callable[[], bool]) -> bool:
    """Wait until `port` accepts connections; give up early once `still_starting()` is False."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_accepts(port):
            return True
        if not still_starting():
            return port_accepts(port)
        time.sleep(0.05)
    return False
