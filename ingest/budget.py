"""Each device's message budget: at most `burst` messages in any `burst / rate` seconds.

A sliding window counter of PyPI `limits` (two counters a device, where a moving window would keep
an entry per message), in memory, so the budget is per ingest worker. It is consulted once
per device per batch, not per message: one `hit` with the device's count in the batch, and only when
that does not fit, a second call to learn how many still do. The excess is quarantined as
`rate_limited` by the caller; nothing is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter


class DeviceBudget:
    """Admits each device's messages up to its budget."""

    def __init__(self, rate_msgs_per_s: float, burst_msgs: int) -> None:
        # `limits` windows are whole seconds: burst / rate, rounded, gives the sustained rate.
        self.window_s = max(1, round(burst_msgs / rate_msgs_per_s))
        self._item = RateLimitItemPerSecond(burst_msgs, self.window_s)
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    @property
    def description(self) -> str:
        """The budget in words, for a quarantine detail."""
        return f"over budget: {self._item.amount} messages in {self.window_s}s"

    def admit(self, device_id: str, count: int) -> int:
        """How many of `count` messages arriving now fit the device's budget (those are charged)."""
        if self._limiter.hit(self._item, device_id, cost=count):
            return count
        room = min(count, self._limiter.get_window_stats(self._item, device_id).remaining)
        if room > 0 and self._limiter.hit(self._item, device_id, cost=room):
            return room
        return 0

    def over_budget(self, device_ids: Iterable[str | None]) -> dict[str, int]:
        """{device: messages admitted} for the devices of a batch that exceed their budget.

        `device_ids` are the batch's messages in arrival order (None: not charged); a device's first
        messages are admitted, the rest are not.
        """
        over: dict[str, int] = {}
        for device_id, count in Counter(device_ids).items():
            if device_id is not None:
                admitted = self.admit(device_id, count)
                if admitted < count:
                    over[device_id] = admitted
        return over
