"""In-process guards of the dashboard: sign-in throttling, argon2 slots, per-user concurrency caps.

Everything here lives in the memory of one dashboard process (one per app): behind a load balancer
each instance counts on its own, so the effective limits are the settings times the instances.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from pulsewire.settings import Settings


class CapReached(Exception):
    """A caller already has as many of something running as it may."""


class ConcurrencyCap:
    """At most `limit` concurrent holders per key (a user id, say); the next one is refused, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[int, int] = {}

    @contextmanager
    def slot(self, key: int) -> Iterator[None]:
        """Hold one of the key's slots for the block; CapReached when none is free."""
        held = self._held.get(key, 0)
        if held >= self.limit:
            raise CapReached(f"at most {self.limit} at a time")
        self._held[key] = held + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]


class LoginGuard:
    """Failed sign-ins per account and per client address in a moving window, and argon2 slots.

    Only failures count, so people who type their password right are never slowed down; a burst
    is checked again once it holds an argon2 slot, so at most `argon2 slots` attempts overshoot.
    """

    def __init__(self, settings: Settings) -> None:
        window = settings.login_window_s
        self._per_account = RateLimitItemPerSecond(settings.login_failures_per_account_max, window)
        self._per_address = RateLimitItemPerSecond(settings.login_failures_per_address_max, window)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.argon2_slots = asyncio.Semaphore(settings.login_argon2_concurrency_max)

    def retry_after_s(self, email: str, address: str) -> int | None:
        """Seconds until this account and address may try again, or None when they may now."""
        waits = [
            self._wait_s(item, key)
            for item, key in ((self._per_account, _account(email)), (self._per_address, _address(address)))
            if not self._limiter.test(item, key)
        ]
        return max(waits) if waits else None

    def failed(self, email: str, address: str) -> None:
        """Count one failed sign-in against the account and the address."""
        self._limiter.hit(self._per_account, _account(email))
        self._limiter.hit(self._per_address, _address(address))

    def _wait_s(self, item: RateLimitItemPerSecond, key: str) -> int:
        reset_at = self._limiter.get_window_stats(item, key).reset_time
        return max(1, math.ceil(reset_at - time.time()))


def _account(email: str) -> str:
    # The same key however the address is typed, as the login query matches it.
    return "account:" + email.strip().lower()


def _address(address: str) -> str:
    return "address:" + address
