"""Which of a worker's evaluator threads evaluates which device, and when to look for more.

One thread at a time asks the database which devices have queued work (`due_devices`); the
answer is shared, and each device goes to one thread. So a notification costs one such query and
one evaluation, however many evaluator threads the worker has: before, every thread woke, asked,
and all but one read the device's data only to find its lock taken. Workers in other processes
still meet at the per-device advisory lock.

Events page, readings mostly do not: with more than one thread, one is always kept for devices
with queued events, so an event never waits for an evaluation of readings to end. The others take
either, events first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from relay.engine import Due


class Turns:
    """The devices due in this process, handed out one thread per device."""

    def __init__(self, threads: int) -> None:
        self._cond = threading.Condition()
        self._ready: list[Due] = []
        self._busy: dict[str, bool] = {}  # device -> it has events
        self._readings_cap = max(1, threads - 1)
        self._readings_busy = 0
        # Set by a notification (and at start: what was queued before we listened); cleared by the
        # thread that then asks the database.
        self._signalled = True
        self._asking = False
        self._closed = False

    def signal(self) -> None:
        """New work was committed: one waiting thread asks for it."""
        with self._cond:
            self._signalled = True
            self._cond.notify()

    def close(self) -> None:
        """Wake every thread; `take` returns None from now on."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, ask: Callable[[], list[Due]], poll_s: float) -> str | None:
        """A device for the calling thread to evaluate, or None (then call again).

        Waits up to `poll_s` for a signal when nothing it may take is known to be due; asks the
        database (through `ask`) when signalled or when the wait ran out, which is the safety net
        for a notification lost with a reconnect and for devices held back until their `retry_at`.
        """
        with self._cond:
            if self._closed:
                return None
            device = self._pick()
            if device is None and not self._signalled:
                self._cond.wait(poll_s)
                if self._closed:
                    return None
                device = self._pick()
            if device is not None:
                return device
            if self._asking:
                self._cond.wait(poll_s)  # another thread is asking: its answer wakes us
                return None
            self._asking, self._signalled = True, False
        found: list[Due] = []
        try:
            found = ask()
        finally:
            with self._cond:
                self._asking = False
                known = set(self._busy) | {due.device_id for due in self._ready}
                self._ready += [due for due in found if due.device_id not in known]
                self._ready.sort(key=lambda due: not due.events)  # stable: the database's order within
                device = None if self._closed else self._pick()
                if self._ready or self._signalled:
                    self._cond.notify()  # the next device, or what came in while we asked
        return device

    def done(self, device: str) -> None:
        """The calling thread has finished with `device`."""
        with self._cond:
            if not self._busy.pop(device, True):
                self._readings_busy -= 1
                if self._ready:
                    self._cond.notify()  # readings that waited for a thread

    def _pick(self) -> str | None:
        """The first ready device this thread may take (caller holds the lock)."""
        for i, due in enumerate(self._ready):
            if due.events or self._readings_busy < self._readings_cap:
                del self._ready[i]
                self._busy[due.device_id] = due.events
                self._readings_busy += not due.events
                return due.device_id
        return None
