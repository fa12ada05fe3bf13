"""Which of a worker's evaluator threads evaluates which device, and when to look for more.

One thread at a time asks the database which devices have queued work (`due_devices`); the
answer is shared, and each device goes to one thread. So a notification costs one such query and
one evaluation, however many evaluator threads the worker has: before, every thread woke, asked,
and all but one read the device's data only to find its lock taken. Workers in other processes
still meet at the per-device advisory lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable


class Turns:
    """The devices due in this process, handed out one thread per device."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._busy: set[str] = set()
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

    def take(self, ask: Callable[[], list[str]], poll_s: float) -> str | None:
        """A device for the calling thread to evaluate, or None (then call again).

        Waits up to `poll_s` for a signal when nothing is known to be due; asks the database (through
        `ask`) when signalled or when the wait ran out, which is the safety net for a notification
        lost with a reconnect and for devices held back until their `retry_at`.
        """
        with self._cond:
            if self._closed:
                return None
            if not self._ready and not self._signalled:
                self._cond.wait(poll_s)
            if self._closed:
                return None
            asking = not self._ready
            if asking:
                if self._asking:
                    self._cond.wait(poll_s)  # another thread is asking: its answer wakes us
                    return None
                self._asking, self._signalled = True, False
        if asking:
            found: list[str] = []
            try:
                found = ask()
            finally:
                with self._cond:
                    self._asking = False
                    self._ready.extend(d for d in found if d not in self._busy and d not in self._ready)
                    if len(self._ready) > 1 or self._signalled:
                        self._cond.notify()  # the next device, or what came in while we asked
        with self._cond:
            if not self._ready or self._closed:
                return None
            device = self._ready.popleft()
            self._busy.add(device)
            return device

    def done(self, device: str) -> None:
        """The calling thread has finished with `device`."""
        with self._cond:
            self._busy.discard(device)
