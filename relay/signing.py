"""Webhook signatures: `Pulsewire-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

A receiver verifies with `verify(secret, header, body, tolerance_s)`: recompute the HMAC over the
timestamp, a dot and the raw request body (bytes, exactly as received), compare in constant time,
and refuse timestamps further than `tolerance_s` from its clock (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

HEADER = "Pulsewire-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def new_secret() -> str:
    """A fresh webhook secret (shown to its owner once)."""
    return "whsec_" + secrets.token_urlsafe(32)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Pulsewire-Signature` header value for `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify(
    secret: str, header: str, body: bytes, tolerance_s: float = 300, *, now: float | None = None
) -> bool:
    """Whether `header` is a valid signature of `body` made with `secret` within `tolerance_s`."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    expected = _digest(secret, t, body)
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))
